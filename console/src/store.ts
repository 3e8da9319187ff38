/**
 * The console's state: what the chat view and the cluster view show, kept
 * up to date from the SDK's events. It holds no protocol logic (reconnects,
 * resume, ordering, retries and dedup are the SDK's): it only remembers
 * what the SDK handed over, keyed so that nothing is shown twice.
 *
 * - Messages are kept per room by seq, so history pages and live messages
 *   merge without duplicates.
 * - Own sends are kept by `client_msg_id` until the server's copy (same
 *   id) is there and acknowledged: one element per send, pending first.
 * - Unread counts follow the Room objects (`last_seq`, `read_seq`) and
 *   move with message and read events.
 * - Presence is per user (not per room): the newest `ts` wins; a members
 *   list answers for users without a newer event.
 *
 * Views subscribe to one change signal and read the fields directly.
 */
import {
  ApiError,
  ChatClient,
  ChatError,
  InvalidArgumentError,
  limits,
  newClientMsgId,
  type ConnectionState,
  type Message,
  type Room,
  type ServerInfo,
  type SessionInfo,
} from '@scalechat/client';

/** A typing event is shown for this long unless renewed. */
export const TYPING_SHOWN_MS = 4_000;
/** The room list is re-read this often (rooms one was added to without a message yet). */
export const ROOM_REFRESH_MS = 5_000;
/** The cluster view re-reads the servers this often. */
export const SERVERS_REFRESH_MS = 1_000;
/** One page of history. */
export const HISTORY_PAGE = 50;
/** Pause after a failed mark-read. */
export const MARK_READ_RETRY_MS = 2_000;
/** Rooms up to this size get read receipts (the contract's limit). */
export const READ_RECEIPTS_MAX_MEMBERS = 100;

export type SendStatus = 'pending' | 'acked' | 'failed';

export interface OwnSend {
  clientMsgId: string;
  body: string;
  ts: number;
  status: SendStatus;
  seq?: number;
  error?: string;
}

export interface RoomState {
  room: Room;
  lastSeq: number;
  readSeq: number;
  /** Loaded messages (history and live), by seq. */
  messages: Map<number, Message>;
  /** Own sends not yet both stored-and-seen: by client_msg_id. */
  sends: Map<string, OwnSend>;
  historyLoaded: boolean;
  loadingOlder: boolean;
  /** False once history answered with nothing older. */
  hasOlder: boolean;
  /** user -> when their typing indicator expires. */
  typing: Map<string, number>;
  /** user -> read marker (read receipts). */
  reads: Map<string, number>;
  /** Members as last listed (user ids, sorted). */
  members: string[] | undefined;
  markingRead: boolean;
  /** A failed mark-read is not retried before this local time. */
  markReadRetryAt: number;
  /** Local time the room was first learnt. */
  learntAt: number;
}

export interface Presence {
  online: boolean;
  /** Server time of the event; 0 for a members list. */
  ts: number;
  /** Local time it was learnt. */
  learntAt: number;
}

/** A server seen by the cluster view; `gone` once the API no longer lists it. */
export interface ServerRow {
  info: ServerInfo;
  gone: boolean;
  load: number | undefined;
}

export type Notice = { kind: 'error' | 'info'; text: string } | undefined;

export class ConsoleStore {
  readonly user: string;
  readonly chat: ChatClient;
  readonly rooms = new Map<string, RoomState>();
  readonly presence = new Map<string, Presence>();
  servers: ServerRow[] = [];
  serversError: string | undefined;
  serversFetchedAt: number | undefined;
  connection: ConnectionState = 'disconnected';
  session: SessionInfo | undefined;
  /** The room shown in the chat view. */
  openRoom: string | undefined;
  notice: Notice;
  private readonly listeners = new Set<() => void>();
  private readonly timers: ReturnType<typeof setInterval>[] = [];
  private readonly fetchingRooms = new Set<string>();
  /** Messages of rooms still being looked up. */
  private earlyMessages: Message[] = [];
  private changeQueued = false;
  private closed = false;

  constructor(user: string, chat: ChatClient) {
    this.user = user;
    this.chat = chat;
    chat.on('state', (state) => {
      this.connection = state;
      this.changed();
    });
    chat.on('session', (session) => {
      this.session = session;
      // Events missed while disconnected: read the open room's members and reads again.
      if (this.openRoom) void this.refreshRoomDetails(this.openRoom);
      void this.refreshRooms();
      this.changed();
    });
    chat.on('message', (m) => this.onMessage(m));
    chat.on('typing', ({ room, user: who }) => {
      const r = this.rooms.get(room);
      if (!r || who === this.user) return;
      r.typing.set(who, Date.now() + TYPING_SHOWN_MS);
      this.changed();
      setTimeout(() => this.changed(), TYPING_SHOWN_MS + 50);
    });
    chat.on('presence', ({ room, user: who, online, ts }) => {
      const known = this.presence.get(who);
      if (known && known.ts > ts) return;
      this.presence.set(who, { online, ts, learntAt: Date.now() });
      // A member the open room's list does not show yet (added meanwhile).
      const r = this.rooms.get(room);
      if (r?.members && !r.members.includes(who) && this.openRoom === room) void this.refreshRoomDetails(room);
      this.changed();
    });
    chat.on('error', (e) => {
      // Connection failures show in the connection state; a refused token needs the user.
      if (e.code === 'unauthorized') this.setNotice('error', `The server refused the token (${e.message}): sign out and in again.`);
    });
    chat.on('read', ({ room, user: who, seq }) => {
      const r = this.rooms.get(room);
      if (!r) return;
      if (who === this.user) r.readSeq = Math.max(r.readSeq, seq);
      else r.reads.set(who, Math.max(r.reads.get(who) ?? 0, seq));
      this.changed();
    });
  }

  // --- life cycle ------------------------------------------------------------

  /** Lists the rooms (this checks the token too), then connects. */
  async start(): Promise<void> {
    await this.refreshRooms(true);
    void this.chat.connect().catch((e: unknown) => this.setNotice('error', `Cannot connect: ${describe(e)}`));
    this.timers.push(setInterval(() => void this.refreshRooms(), ROOM_REFRESH_MS));
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    this.chat.close();
    this.listeners.clear();
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Coalesces changes into one notification per task. */
  changed(): void {
    if (this.changeQueued || this.closed) return;
    this.changeQueued = true;
    queueMicrotask(() => {
      this.changeQueued = false;
      for (const l of this.listeners) l();
    });
  }

  setNotice(kind: 'error' | 'info', text: string): void {
    this.notice = { kind, text };
    this.changed();
  }

  clearNotice(): void {
    this.notice = undefined;
    this.changed();
  }

  // --- rooms -----------------------------------------------------------------

  /** Rooms sorted for the list: newest activity first. */
  roomList(): RoomState[] {
    return [...this.rooms.values()].sort(
      (a, b) => lastActivity(b) - lastActivity(a) || a.room.name.localeCompare(b.room.name) || a.room.id.localeCompare(b.room.id),
    );
  }

  unread(r: RoomState): number {
    return Math.max(0, r.lastSeq - r.readSeq);
  }

  totalUnread(): number {
    let n = 0;
    for (const r of this.rooms.values()) n += this.unread(r);
    return n;
  }

  async refreshRooms(throwErrors = false): Promise<void> {
    const askedAt = Date.now();
    try {
      const rooms = await this.chat.rooms.list();
      const listed = new Set<string>();
      for (const room of rooms) {
        listed.add(room.id);
        this.learnRoom(room);
      }
      // Rooms this user was removed from (not those learnt while the list was on its way).
      for (const [id, r] of [...this.rooms]) {
        if (!listed.has(id) && r.learntAt < askedAt && !this.fetchingRooms.has(id)) this.rooms.delete(id);
      }
      if (this.openRoom && !this.rooms.has(this.openRoom)) this.openRoom = undefined;
      this.changed();
    } catch (e) {
      if (throwErrors) throw e;
    }
  }

  private learnRoom(room: Room): RoomState {
    let r = this.rooms.get(room.id);
    if (!r) {
      r = {
        room,
        lastSeq: room.last_seq,
        readSeq: room.read_seq,
        messages: new Map(),
        sends: new Map(),
        historyLoaded: false,
        loadingOlder: false,
        hasOlder: true,
        typing: new Map(),
        reads: new Map(),
        members: undefined,
        markingRead: false,
        markReadRetryAt: 0,
        learntAt: Date.now(),
      };
      this.rooms.set(room.id, r);
    } else {
      // Someone added or removed a member: the open room's list is stale.
      if (room.member_count !== r.room.member_count && this.openRoom === room.id) void this.refreshRoomDetails(room.id);
      r.room = room;
      r.lastSeq = Math.max(r.lastSeq, room.last_seq);
      r.readSeq = Math.max(r.readSeq, room.read_seq);
    }
    return r;
  }

  async createRoom(name: string, members: string[]): Promise<string> {
    const room = await this.chat.rooms.create({ name, members });
    this.learnRoom(room);
    this.changed();
    return room.id;
  }

  async addMember(roomId: string, user: string): Promise<void> {
    await this.chat.members.add(roomId, user);
    await this.refreshRoomDetails(roomId);
    try {
      this.learnRoom(await this.chat.rooms.get(roomId));
    } catch {
      // The member count stays as it was until the next refresh.
    }
    this.changed();
  }

  /** Opens a room: loads its latest history, members and read markers. */
  open(roomId: string | undefined): void {
    this.openRoom = roomId;
    this.changed();
    if (!roomId) return;
    const r = this.rooms.get(roomId);
    if (!r) return;
    if (!r.historyLoaded) void this.loadLatest(r);
    void this.refreshRoomDetails(roomId);
  }

  private async loadLatest(r: RoomState): Promise<void> {
    try {
      const page = await this.chat.messages.latest(r.room.id, HISTORY_PAGE);
      for (const m of page) this.keep(r, m);
      r.historyLoaded = true;
      if (page.length < HISTORY_PAGE || (page[0]?.seq ?? 1) <= 1) r.hasOlder = false;
      this.changed();
    } catch (e) {
      this.setNotice('error', `Cannot load history: ${describe(e)}`);
    }
  }

  /** Scroll-back: the page just below the oldest loaded message. */
  async loadOlder(roomId: string): Promise<void> {
    const r = this.rooms.get(roomId);
    if (!r || r.loadingOlder || !r.hasOlder || !r.historyLoaded) return;
    const oldest = this.oldestSeq(r);
    if (oldest === undefined || oldest <= 1) {
      r.hasOlder = false;
      this.changed();
      return;
    }
    r.loadingOlder = true;
    this.changed();
    try {
      const page = await this.chat.messages.before(roomId, oldest, HISTORY_PAGE);
      for (const m of page) this.keep(r, m);
      if (page.length < HISTORY_PAGE || (page[0]?.seq ?? 1) <= 1) r.hasOlder = false;
    } catch (e) {
      this.setNotice('error', `Cannot load older messages: ${describe(e)}`);
    } finally {
      r.loadingOlder = false;
      this.changed();
    }
  }

  oldestSeq(r: RoomState): number | undefined {
    let min: number | undefined;
    for (const seq of r.messages.keys()) if (min === undefined || seq < min) min = seq;
    return min;
  }

  newestSeq(r: RoomState): number {
    let max = 0;
    for (const seq of r.messages.keys()) if (seq > max) max = seq;
    return max;
  }

  async refreshRoomDetails(roomId: string): Promise<void> {
    const r = this.rooms.get(roomId);
    if (!r) return;
    const askedAt = Date.now();
    try {
      const [members, reads] = await Promise.all([
        this.chat.members.list(roomId),
        r.room.member_count <= READ_RECEIPTS_MAX_MEMBERS ? this.chat.rooms.reads(roomId) : Promise.resolve([]),
      ]);
      r.members = members.map((m) => m.user).sort();
      for (const m of members) {
        const known = this.presence.get(m.user);
        // An event learnt after the list was asked for is newer than the list.
        if (known && known.learntAt > askedAt) continue;
        this.presence.set(m.user, { online: m.online, ts: known?.ts ?? 0, learntAt: askedAt });
      }
      for (const { user, seq } of reads) {
        if (user === this.user) r.readSeq = Math.max(r.readSeq, seq);
        else r.reads.set(user, Math.max(r.reads.get(user) ?? 0, seq));
      }
      this.changed();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 403)) this.setNotice('error', `Cannot load members: ${describe(e)}`);
    }
  }

  isOnline(user: string): boolean {
    if (user === this.user) return this.connection === 'connected';
    return this.presence.get(user)?.online ?? false;
  }

  typingUsers(r: RoomState): string[] {
    const now = Date.now();
    const users: string[] = [];
    for (const [user, until] of r.typing) {
      if (until > now) users.push(user);
      else r.typing.delete(user);
    }
    return users.sort();
  }

  /** Read receipts: for each seq, the other members whose marker stands there. */
  receipts(r: RoomState): Map<number, string[]> {
    const at = new Map<number, string[]>();
    if (r.room.member_count > READ_RECEIPTS_MAX_MEMBERS) return at;
    const shown = [...r.messages.keys()].sort((a, b) => a - b);
    for (const [user, seq] of r.reads) {
      if (user === this.user || seq <= 0) continue;
      // The newest loaded message at or below the marker.
      let target: number | undefined;
      for (const s of shown) {
        if (s <= seq) target = s;
        else break;
      }
      if (target === undefined) continue;
      // A member's own message says it was seen by them already.
      if (r.messages.get(target)?.from === user) continue;
      at.set(target, [...(at.get(target) ?? []), user].sort());
    }
    return at;
  }

  // --- messages ----------------------------------------------------------------

  private onMessage(m: Message): void {
    let r = this.rooms.get(m.room);
    if (!r) {
      // A room this user was added to while connected: learn it.
      void this.fetchRoom(m.room);
      r = this.rooms.get(m.room);
      if (!r) {
        this.earlyMessages.push(m);
        return;
      }
    }
    this.keep(r, m);
    r.lastSeq = Math.max(r.lastSeq, m.seq);
    if (m.from === this.user) r.readSeq = Math.max(r.readSeq, m.seq);
    else r.reads.set(m.from, Math.max(r.reads.get(m.from) ?? 0, m.seq));
    r.typing.delete(m.from);
    this.changed();
  }

  private async fetchRoom(roomId: string): Promise<void> {
    if (this.fetchingRooms.has(roomId)) return;
    this.fetchingRooms.add(roomId);
    try {
      const r = this.learnRoom(await this.chat.rooms.get(roomId));
      const early = this.earlyMessages.filter((m) => m.room === roomId);
      this.earlyMessages = this.earlyMessages.filter((m) => m.room !== roomId);
      for (const m of early) {
        this.keep(r, m);
        r.lastSeq = Math.max(r.lastSeq, m.seq);
        if (m.from === this.user) r.readSeq = Math.max(r.readSeq, m.seq);
      }
      this.changed();
    } catch {
      this.earlyMessages = this.earlyMessages.filter((m) => m.room !== roomId);
    } finally {
      this.fetchingRooms.delete(roomId);
    }
  }

  private keep(r: RoomState, m: Message): void {
    r.messages.set(m.seq, m);
    const own = m.client_msg_id == null ? undefined : r.sends.get(m.client_msg_id);
    // Stored, seen and acknowledged: the message stands for the send now.
    if (own && own.status === 'acked' && m.from === this.user) r.sends.delete(own.clientMsgId);
  }

  /** Why a body cannot be sent, or undefined. */
  static bodyProblem(body: string): string | undefined {
    if (body.trim().length === 0) return 'Type a message first.';
    const bytes = new TextEncoder().encode(body).length;
    if (bytes > limits.maxBodyBytes) return `The message is ${bytes} bytes; at most ${limits.maxBodyBytes} fit.`;
    return undefined;
  }

  /** Sends; the send is shown as pending at once, and as acknowledged once stored. */
  send(roomId: string, body: string): void {
    const r = this.rooms.get(roomId);
    if (!r) return;
    const clientMsgId = newClientMsgId();
    const own: OwnSend = { clientMsgId, body, ts: Date.now(), status: 'pending' };
    r.sends.set(clientMsgId, own);
    this.changed();
    this.chat.send(roomId, body, { clientMsgId }).then(
      (ack) => {
        own.status = 'acked';
        own.seq = ack.seq;
        r.lastSeq = Math.max(r.lastSeq, ack.seq);
        r.readSeq = Math.max(r.readSeq, ack.seq);
        if (r.messages.get(ack.seq)?.client_msg_id === clientMsgId) r.sends.delete(clientMsgId);
        this.changed();
      },
      (e: unknown) => {
        own.status = 'failed';
        own.error = describe(e);
        this.changed();
      },
    );
  }

  /** The status of an own message as shown: pending until its ack arrived. */
  statusOf(r: RoomState, m: Message): SendStatus | undefined {
    if (m.from !== this.user) return undefined;
    const own = m.client_msg_id == null ? undefined : r.sends.get(m.client_msg_id);
    return own ? own.status : 'acked';
  }

  /** Own sends not yet in `messages` (shown after them, in sending order). */
  unplacedSends(r: RoomState): OwnSend[] {
    const placed = new Set<string>();
    for (const m of r.messages.values()) if (m.client_msg_id != null && m.from === this.user) placed.add(m.client_msg_id);
    return [...r.sends.values()].filter((s) => !placed.has(s.clientMsgId)).sort((a, b) => a.ts - b.ts);
  }

  dismissSend(roomId: string, clientMsgId: string): void {
    this.rooms.get(roomId)?.sends.delete(clientMsgId);
    this.changed();
  }

  typing(roomId: string): void {
    this.chat.typing(roomId);
  }

  /** Marks everything up to the newest message read (called when it is visible). */
  markRead(roomId: string): void {
    const r = this.rooms.get(roomId);
    if (!r || r.markingRead || r.lastSeq <= r.readSeq || Date.now() < r.markReadRetryAt) return;
    const seq = r.lastSeq;
    r.markingRead = true;
    this.chat
      .markRead(roomId, seq)
      .then(
        (marker) => {
          r.readSeq = Math.max(r.readSeq, marker.read_seq);
        },
        () => {
          // Not now (the API is unreachable): the next render after this pause tries again.
          r.markReadRetryAt = Date.now() + MARK_READ_RETRY_MS;
          setTimeout(() => this.changed(), MARK_READ_RETRY_MS);
        },
      )
      .finally(() => {
        r.markingRead = false;
        this.changed();
      });
  }

  // --- cluster -------------------------------------------------------------------

  async refreshServers(): Promise<void> {
    try {
      const listed = await this.chat.servers();
      const byId = new Map(this.servers.map((s) => [s.info.id, s]));
      const ids = new Set(listed.map((s) => s.id));
      for (const info of listed) byId.set(info.id, { info, gone: false, load: loadOf(info) });
      for (const [id, row] of byId) if (!ids.has(id)) row.gone = true;
      this.servers = [...byId.values()].sort((a, b) => a.info.id.localeCompare(b.info.id));
      this.serversError = undefined;
      this.serversFetchedAt = Date.now();
    } catch (e) {
      this.serversError = describe(e);
    }
    this.changed();
  }
}

function lastActivity(r: RoomState): number {
  let ts = r.room.created_at;
  for (const m of r.messages.values()) if (m.ts > ts) ts = m.ts;
  return ts;
}

/** A server's load, if the API reports one (servers before it did not). */
function loadOf(info: ServerInfo): number | undefined {
  const load = info.load;
  return typeof load === 'number' && Number.isFinite(load) ? load : undefined;
}

/** A human sentence for an error, shown as text (never as HTML). */
export function describe(e: unknown): string {
  if (e instanceof InvalidArgumentError) return e.message;
  if (e instanceof ApiError) return e.status === 0 ? `network error: ${e.message}` : `${e.message} (${e.code})`;
  if (e instanceof ChatError) return `${e.message} (${e.code})`;
  return e instanceof Error ? e.message : String(e);
}
