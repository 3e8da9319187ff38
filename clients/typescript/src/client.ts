/**
 * `ChatClient`: one object the app talks to. It owns the connection life
 * cycle (ticket, socket, welcome, resume, liveness, reconnect) and wires the
 * pure parts together: `RoomCursors` (ordering and dedup per room),
 * `Outbox` (sends until acknowledged, one `client_msg_id` each), `Backoff`
 * (delays between attempts) and the frame parser. The app never sees a
 * socket: it sees messages in order, once, and sends that settle once
 * stored.
 *
 * Every socket callback checks that its socket is still the current one, so
 * a late event of an abandoned socket cannot disturb the next connection.
 */
import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter, type Listener } from './emitter.js';
import { ApiError, ChatError, ClosedError, SendError } from './errors.js';
import { encodeClientFrame, parseServerFrame, type FrameProblem } from './frames.js';
import { Outbox } from './outbox.js';
import { RestClient, globalFetch, type FetchLike } from './rest.js';
import { RoomCursors, type Gap } from './room-cursors.js';
import { TokenSource, type GetToken } from './token.js';
import {
  OPEN,
  resolveWebSocketFactory,
  textOf,
  withTicket,
  type WebSocketConstructor,
  type WebSocketFactory,
  type WebSocketLike,
} from './transport.js';
import { checkBody, checkClientMsgId, checkRoomId, checkSeq, checkUserId } from './validate.js';
import type {
  ClientFrame,
  CreateRoomRequest,
  Member,
  MemberRead,
  Message,
  ReadMarker,
  Room,
  ServerFrame,
  ServerInfo,
} from './wire.js';

export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting';

export interface ChatClientOptions {
  /** The API server, e.g. `http://127.0.0.1:8080`. */
  apiUrl: string;
  /** Returns a token; called again when it expires or is refused (401). */
  getToken: GetToken;
  /** A WebSocket class (on Node 20: the `ws` package). Default: the global one. */
  WebSocket?: WebSocketConstructor;
  /** Instead of `WebSocket`: a function opening a WebSocket-like object. */
  webSocketFactory?: WebSocketFactory;
  /** A `fetch` implementation. Default: the global one. */
  fetch?: FetchLike;
  /** Reconnect backoff bounds (defaults 500 ms, 30 s). */
  reconnect?: Partial<BackoffOptions>;
  /** No ack for this long: the connection is presumed dead and replaced. */
  sendTimeoutMs?: number;
  /** How long an out-of-order gap may stay open before history fills it. */
  gapFillDelayMs?: number;
  /** Longest wait for `welcome` after opening a socket. */
  welcomeTimeoutMs?: number;
  /** A silent connection is pinged after this long... */
  pingIntervalMs?: number;
  /** ...and replaced if still silent this long after the ping. */
  pongTimeoutMs?: number;
  /** Longest delay between retries of a refused send (`rate_limited`, `unavailable`). */
  maxRetryDelayMs?: number;
  /** At most one `typing` frame per room this often. */
  typingThrottleMs?: number;
  /** Where to resume rooms from: seqs the app already has (e.g. persisted). */
  cursors?: Record<string, number>;
  /** Random source in [0, 1) for jitter (tests make it deterministic). */
  random?: () => number;
}

/** What `send` resolves with: where the message was stored. */
export interface SendAck {
  room: string;
  seq: number;
  id: string;
  clientMsgId: string;
}

export interface TypingEvent {
  room: string;
  user: string;
}
export interface PresenceEvent {
  room: string;
  user: string;
  online: boolean;
  ts: number;
}
export interface ReadEvent {
  room: string;
  user: string;
  seq: number;
}
export interface SessionInfo {
  serverId: string;
  user: string;
  session: string;
}

export interface ChatEvents {
  message: Message;
  typing: TypingEvent;
  presence: PresenceEvent;
  read: ReadEvent;
  state: ConnectionState;
  /** The server's `welcome`: where this connection is placed. */
  session: SessionInfo;
  /** Server errors not tied to a pending send, and connection failures. */
  error: ChatError;
  /** A frame that was malformed or of an unknown type; it was skipped. */
  protocolError: FrameProblem;
}

type Settle = { resolve: (ack: SendAck) => void; reject: (error: Error) => void };

/** Resume frames name at most this many rooms (the server's limit). */
const MAX_RESUME_ROOMS = 1000;
/** HTTP statuses of `/v1/connect` that retrying cannot fix. */
const FATAL_CONNECT_STATUSES = new Set([400, 403, 404]);
/** Close code the server uses when draining. */
const SERVICE_RESTART = 1012;
/** Close code this client uses when it abandons a socket. */
const CLIENT_GAVE_UP = 4000;

const DEFAULTS = {
  reconnectMinMs: 500,
  reconnectMaxMs: 30_000,
  sendTimeoutMs: 10_000,
  gapFillDelayMs: 1_000,
  welcomeTimeoutMs: 10_000,
  pingIntervalMs: 20_000,
  pongTimeoutMs: 10_000,
  maxRetryDelayMs: 10_000,
  typingThrottleMs: 2_000,
  /** A resume that sends no `resumed` for this long no longer holds back gap fills. */
  resumeTimeoutMs: 10_000,
  /** Base of the retry delay of refused sends and REST posts. */
  retryBaseMs: 250,
  /** Attempts of a REST post before its error reaches the app. */
  restPostAttempts: 5,
};

export class ChatClient {
  /** Rooms: each room returned is tracked for resume. */
  readonly rooms: {
    list(): Promise<Room[]>;
    get(room: string): Promise<Room>;
    create(request: CreateRoomRequest): Promise<Room>;
    /** v1.1 read markers of every member. */
    reads(room: string): Promise<MemberRead[]>;
    /** Services only: the rooms of `user` with that user's read state. */
    ofUser(user: string): Promise<Room[]>;
  };
  readonly members: {
    list(room: string): Promise<Member[]>;
    add(room: string, user: string): Promise<void>;
    remove(room: string, user: string): Promise<void>;
  };
  /** History and REST posting. History does not go through `message` events. */
  readonly messages: {
    /** Posts over REST; retried with one `client_msg_id` until stored or refused. */
    post(room: string, body: string, options?: { from?: string; clientMsgId?: string }): Promise<Message>;
    /** Messages with seq > `seq`, ascending. */
    after(room: string, seq: number, limit?: number): Promise<Message[]>;
    /** The `limit` messages just below `seq`, ascending. */
    before(room: string, seq: number, limit?: number): Promise<Message[]>;
    /** The latest `limit` messages, ascending. */
    latest(room: string, limit?: number): Promise<Message[]>;
  };

  private readonly rest: RestClient;
  /** The socket factory, or why there is none (a service needs no socket). */
  private readonly openSocket: WebSocketFactory | ChatError;
  private readonly events = new Emitter<ChatEvents>();
  private readonly cursors = new RoomCursors<Message>();
  private readonly outbox = new Outbox<Settle>();
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly config: typeof DEFAULTS;

  private currentState: ConnectionState = 'disconnected';
  private wantOpen = false;
  private socket: WebSocketLike | undefined;
  private welcomed = false;
  private currentSession: SessionInfo | undefined;
  /** Bumped for every attempt and by `close`: stale async steps compare it. */
  private generation = 0;
  private reconnectAfterMs: number | undefined;
  private lastFrameAt = 0;
  private pingOutstanding = false;
  /** The rooms of each resume frame still waiting for its `resumed`, oldest first. */
  private resumesPending: string[][] = [];
  private resumeStartedAt: number | undefined;
  private readonly fills = new Set<string>();
  private readonly typingSentAt = new Map<string, number>();
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  private connectWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  constructor(options: ChatClientOptions) {
    if (typeof options.apiUrl !== 'string' || options.apiUrl.length === 0) {
      throw new ChatError('invalid_argument', 'apiUrl is required');
    }
    if (typeof options.getToken !== 'function') {
      throw new ChatError('invalid_argument', 'getToken is required');
    }
    this.random = options.random ?? Math.random;
    this.config = {
      ...DEFAULTS,
      reconnectMinMs: options.reconnect?.minDelayMs ?? DEFAULTS.reconnectMinMs,
      reconnectMaxMs: options.reconnect?.maxDelayMs ?? DEFAULTS.reconnectMaxMs,
      sendTimeoutMs: options.sendTimeoutMs ?? DEFAULTS.sendTimeoutMs,
      gapFillDelayMs: options.gapFillDelayMs ?? DEFAULTS.gapFillDelayMs,
      welcomeTimeoutMs: options.welcomeTimeoutMs ?? DEFAULTS.welcomeTimeoutMs,
      pingIntervalMs: options.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
      pongTimeoutMs: options.pongTimeoutMs ?? DEFAULTS.pongTimeoutMs,
      maxRetryDelayMs: options.maxRetryDelayMs ?? DEFAULTS.maxRetryDelayMs,
      typingThrottleMs: options.typingThrottleMs ?? DEFAULTS.typingThrottleMs,
    };
    this.backoff = new Backoff(
      { minDelayMs: this.config.reconnectMinMs, maxDelayMs: this.config.reconnectMaxMs },
      this.random,
    );
    this.rest = new RestClient(options.apiUrl, new TokenSource(options.getToken), options.fetch ?? globalFetch());
    try {
      this.openSocket = resolveWebSocketFactory(options.webSocketFactory, options.WebSocket);
    } catch (e) {
      this.openSocket = asChatError(e);
    }
    for (const [room, seq] of Object.entries(options.cursors ?? {})) {
      this.cursors.track(checkRoomId(room), checkSeq(seq, `cursors.${room}`), Date.now());
    }

    const rest = this.rest;
    this.rooms = {
      list: async () => {
        const rooms = await rest.listRooms();
        await Promise.all(rooms.map((r) => this.learnRoom(r.id, r.last_seq)));
        return rooms;
      },
      get: async (room) => {
        const r = await rest.getRoom(room);
        await this.learnRoom(r.id, r.last_seq);
        return r;
      },
      create: async (request) => {
        const r = await rest.createRoom(request);
        // A new room has no messages yet: start at 0.
        await this.learnRoom(r.id, r.last_seq ?? 0);
        return r;
      },
      reads: (room) => rest.reads(room),
      ofUser: (user) => rest.roomsOfUser(user),
    };
    this.members = {
      list: (room) => rest.listMembers(room),
      add: (room, user) => rest.addMember(room, user),
      remove: async (room, user) => {
        await rest.removeMember(room, user);
        if (user === this.currentSession?.user) this.cursors.forget(room);
      },
    };
    this.messages = {
      post: (room, body, options = {}) => this.postWithRetries(room, body, options),
      after: (room, seq, limit) => rest.history(room, { after: seq, limit }),
      before: (room, seq, limit) => rest.history(room, { before: seq, limit }),
      latest: (room, limit) => rest.history(room, { limit }),
    };
  }

  // --- public API ---------------------------------------------------------

  get state(): ConnectionState {
    return this.currentState;
  }

  /** Where the current connection is placed (undefined while not connected). */
  get session(): SessionInfo | undefined {
    return this.currentSession;
  }

  on<K extends keyof ChatEvents>(event: K, listener: Listener<ChatEvents[K]>): () => void {
    return this.events.on(event, listener);
  }

  off<K extends keyof ChatEvents>(event: K, listener: Listener<ChatEvents[K]>): void {
    this.events.off(event, listener);
  }

  /**
   * Connects and stays connected (reconnecting by itself) until `close`.
   * Resolves once connected; rejects only for failures retrying cannot fix
   * (a service token, which may not open sessions) or when closed first.
   */
  connect(): Promise<void> {
    if (this.currentState === 'connected') return Promise.resolve();
    const connected = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (this.openSocket instanceof ChatError) return Promise.reject(this.openSocket);
    if (!this.wantOpen) {
      this.wantOpen = true;
      this.setState('connecting');
      void this.attempt();
    }
    return connected;
  }

  /** Disconnects for good; pending sends are rejected with `ClosedError`. */
  close(): void {
    this.wantOpen = false;
    this.generation += 1;
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    const socket = this.socket;
    this.detach();
    if (socket) closeQuietly(socket, 1000, 'client closed');
    for (const entry of this.outbox.takeAll()) entry.settle.reject(new ClosedError());
    this.rejectWaiters(new ClosedError());
    this.setState('disconnected');
  }

  /**
   * Sends `body` to `room` over the socket. Resolves once the server stored
   * it; retried (same `client_msg_id`) across reconnects, `unavailable`,
   * timeouts and `rate_limited` until then. Rejects with `SendError` when
   * the server refuses it (`forbidden`, `invalid_request`), with
   * `InvalidArgumentError` before sending anything for a bad argument, and
   * with `ClosedError` when the client is closed first.
   */
  send(room: string, body: string, options: { clientMsgId?: string } = {}): Promise<SendAck> {
    let clientMsgId: string;
    try {
      checkRoomId(room);
      checkBody(body);
      clientMsgId = options.clientMsgId === undefined ? newClientMsgId() : checkClientMsgId(options.clientMsgId);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!this.wantOpen) return Promise.reject(new ClosedError('not connected: call connect() first'));
    return new Promise<SendAck>((resolve, reject) => {
      this.outbox.add(clientMsgId, room, body, { resolve, reject }, Date.now());
      // Our own message comes back on this session: the room starts there
      // at the latest (a look-up could race with it and hide it).
      if (!this.cursors.isTracked(room)) this.cursors.track(room, undefined, Date.now());
      this.flushOutbox();
    });
  }

  /** Tells the room's other members that this user is typing (throttled). */
  typing(room: string): boolean {
    checkRoomId(room);
    const now = Date.now();
    const last = this.typingSentAt.get(room);
    if (last !== undefined && now - last < this.config.typingThrottleMs) return false;
    if (!this.write({ type: 'typing', room })) return false;
    this.typingSentAt.set(room, now);
    return true;
  }

  /** v1.1: moves this user's read marker in `room` (REST; forward only). */
  markRead(room: string, seq: number): Promise<ReadMarker> {
    return this.rest.markRead(room, seq);
  }

  /** v1.1: the same with a `read` frame on the socket, unanswered; false when not connected. */
  markReadLive(room: string, seq: number): boolean {
    checkRoomId(room);
    checkSeq(seq);
    return this.write({ type: 'read', room, seq });
  }

  /** The live chat servers as the API server sees them. */
  servers(): Promise<ServerInfo[]> {
    return this.rest.servers();
  }

  /**
   * Tracks `room` for ordering and resume. `afterSeq`: the last seq the app
   * already has (messages after it will be delivered); omitted: the room's
   * latest seq, looked up now.
   */
  track(room: string, afterSeq?: number): void {
    checkRoomId(room);
    if (afterSeq !== undefined) checkSeq(afterSeq, 'afterSeq');
    void this.learnRoom(room, afterSeq);
  }

  /** The last seq handed to the app per tracked room (what a resume starts from). */
  positions(): Record<string, number> {
    return this.cursors.resumePoints();
  }

  // --- connection life cycle ---------------------------------------------

  private async attempt(): Promise<void> {
    const generation = ++this.generation;
    this.clearTimer('reconnect');
    let socket: WebSocketLike;
    try {
      const ticket = await this.rest.connectTicket();
      if (generation !== this.generation) return;
      if (this.openSocket instanceof ChatError) throw this.openSocket;
      socket = this.openSocket(withTicket(ticket.url, ticket.ticket));
    } catch (e) {
      if (generation !== this.generation) return;
      const error = asChatError(e);
      if (error instanceof ApiError && FATAL_CONNECT_STATUSES.has(error.status)) {
        this.fail(error);
        return;
      }
      this.events.emit('error', error);
      this.scheduleReconnect(this.backoff.next());
      return;
    }
    this.socket = socket;
    this.welcomed = false;
    socket.onopen = noop;
    socket.onerror = noop;
    socket.onmessage = (event: { data: unknown }) => {
      if (this.socket === socket) this.onData(event.data);
    };
    socket.onclose = (event: { code?: unknown }) => {
      if (this.socket === socket) this.onSocketGone(typeof event.code === 'number' ? event.code : 1006);
    };
    this.armTimer('welcome', Date.now() + this.config.welcomeTimeoutMs, () => this.dropSocket('no welcome'));
  }

  /** A failure no retry can fix: stop, and tell everyone waiting. */
  private fail(error: ChatError): void {
    this.events.emit('error', error);
    this.rejectWaiters(error);
    this.close();
  }

  private scheduleReconnect(delayMs: number): void {
    if (!this.wantOpen) return;
    this.armTimer('reconnect', Date.now() + delayMs, () => void this.attempt());
  }

  /** The socket closed (or was abandoned): requeue sends and plan the next attempt. */
  private onSocketGone(code: number): void {
    const wasConnected = this.welcomed;
    this.detach();
    if (!this.wantOpen) return;
    let delay: number;
    if (this.reconnectAfterMs !== undefined) {
      delay = this.reconnectAfterMs;
      this.reconnectAfterMs = undefined;
    } else if (code === SERVICE_RESTART) {
      // Draining without a `reconnect` frame: come back soon, spread out.
      delay = Math.floor(this.random() * this.config.reconnectMinMs);
    } else {
      delay = this.backoff.next();
    }
    if (wasConnected) this.setState('reconnecting');
    this.scheduleReconnect(delay);
  }

  /** Gives up on the current socket at once, without waiting for a close handshake. */
  private dropSocket(reason: string): void {
    const socket = this.socket;
    if (!socket) return;
    this.onSocketGone(CLIENT_GAVE_UP);
    closeQuietly(socket, CLIENT_GAVE_UP, reason);
  }

  /** Forgets the current socket and everything tied to it. */
  private detach(): void {
    const socket = this.socket;
    if (socket) {
      socket.onopen = noop;
      socket.onmessage = noop;
      socket.onclose = noop;
      socket.onerror = noop;
    }
    this.socket = undefined;
    this.welcomed = false;
    this.currentSession = undefined;
    this.resumesPending = [];
    this.resumeStartedAt = undefined;
    this.pingOutstanding = false;
    for (const name of ['welcome', 'liveness', 'outbox', 'resume', 'drain']) this.clearTimer(name);
    this.outbox.requeueInflight(Date.now());
  }

  private setState(state: ConnectionState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.events.emit('state', state);
  }

  private rejectWaiters(error: Error): void {
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(error);
  }

  // --- frames ---------------------------------------------------------------

  private onData(data: unknown): void {
    this.lastFrameAt = Date.now();
    this.pingOutstanding = false;
    const text = textOf(data);
    if (text === undefined) {
      this.events.emit('protocolError', { kind: 'binary', detail: 'a frame that is not text', text: '' });
      return;
    }
    const parsed = parseServerFrame(text);
    if (!parsed.ok) {
      this.events.emit('protocolError', parsed.problem);
      return;
    }
    this.onFrame(parsed.frame);
  }

  private onFrame(frame: ServerFrame): void {
    const now = Date.now();
    switch (frame.type) {
      case 'welcome':
        this.onWelcome({ serverId: frame.server_id, user: frame.user, session: frame.session });
        return;
      case 'message': {
        const { type: _type, ...message } = frame;
        this.deliver(this.cursors.offer(message, now));
        this.armGapTimer();
        return;
      }
      case 'ack': {
        if (frame.client_msg_id == null) return;
        const entry = this.outbox.settle(frame.client_msg_id);
        if (entry) {
          entry.settle.resolve({ room: frame.room, seq: frame.seq, id: frame.id, clientMsgId: entry.clientMsgId });
        }
        // Our message comes back as a `message` frame; if that is lost, the
        // ack still tells us it exists, so the gap fill will fetch it.
        this.cursors.noteExists(frame.room, frame.seq, now);
        this.armGapTimer();
        this.armOutboxTimer();
        return;
      }
      case 'error':
        this.onErrorFrame(frame);
        return;
      case 'resumed':
        this.onResumed(frame.rooms);
        return;
      case 'typing':
        this.events.emit('typing', { room: frame.room, user: frame.user });
        return;
      case 'presence':
        this.events.emit('presence', { room: frame.room, user: frame.user, online: frame.online, ts: frame.ts });
        return;
      case 'read':
        this.events.emit('read', { room: frame.room, user: frame.user, seq: frame.seq });
        return;
      case 'reconnect':
        // The server is draining and will close with 1012; come back after
        // `after_ms`, and do not wait for the close longer than that.
        this.reconnectAfterMs = frame.after_ms;
        this.armTimer('drain', now + frame.after_ms, () => {
          this.reconnectAfterMs = 0;
          this.dropSocket('server draining');
        });
        return;
      case 'pong':
        return;
    }
  }

  private onWelcome(session: SessionInfo): void {
    this.clearTimer('welcome');
    this.welcomed = true;
    this.currentSession = session;
    this.backoff.reset();
    this.setState('connected');
    this.events.emit('session', session);
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
    this.sendResume();
    this.flushOutbox();
    this.checkLiveness();
  }

  private onErrorFrame(frame: Extract<ServerFrame, { type: 'error' }>): void {
    const now = Date.now();
    const entry = frame.client_msg_id == null ? undefined : this.outbox.get(frame.client_msg_id);
    if (entry) {
      if (frame.code === 'rate_limited') {
        this.outbox.pause(entry.clientMsgId, now + this.retryDelay(entry.attempts));
      } else if (frame.code === 'unavailable') {
        this.outbox.retryAt(entry.clientMsgId, now + this.retryDelay(entry.attempts));
      } else {
        this.outbox.settle(entry.clientMsgId);
        entry.settle.reject(new SendError(frame.code, frame.message, entry.room, entry.clientMsgId));
      }
      this.armOutboxTimer();
      return;
    }
    if (frame.code === 'unavailable' && this.resumesPending.length > 0) {
      // The server could not finish a resume and sends no `resumed`: resume again.
      this.resumesPending = [];
      this.resumeStartedAt = undefined;
      this.armTimer('resume', now + this.retryDelay(1), () => this.sendResume());
    }
    this.events.emit('error', new ChatError(frame.code, frame.message));
  }

  private deliver(messages: Message[]): void {
    for (const message of messages) this.events.emit('message', message);
  }

  // --- sending ----------------------------------------------------------------

  private write(frame: ClientFrame): boolean {
    const socket = this.socket;
    if (!socket || !this.welcomed || socket.readyState !== OPEN) return false;
    try {
      socket.send(encodeClientFrame(frame));
      return true;
    } catch {
      this.dropSocket('write failed');
      return false;
    }
  }

  private sendResume(): void {
    const points = Object.entries(this.cursors.resumePoints());
    if (points.length === 0) return;
    this.resumesPending = [];
    for (let i = 0; i < points.length; i += MAX_RESUME_ROOMS) {
      const chunk = points.slice(i, i + MAX_RESUME_ROOMS);
      if (this.write({ type: 'resume', rooms: Object.fromEntries(chunk) })) {
        this.resumesPending.push(chunk.map(([room]) => room));
      }
    }
    this.resumeStartedAt = this.resumesPending.length > 0 ? Date.now() : undefined;
  }

  /**
   * The end of a replay. Everything replayed came before this frame, so a
   * room still below its latest seq lacks messages history trimmed (the gap
   * fill skips them); a room asked for but missing from the answer was
   * refused (no longer a member) and is no longer tracked.
   */
  private onResumed(latest: { [room: string]: number }): void {
    const now = Date.now();
    const asked = this.resumesPending.shift() ?? [];
    for (const room of asked) {
      const seq = latest[room];
      if (seq === undefined) this.cursors.forget(room);
      else this.cursors.noteExists(room, seq, now);
    }
    if (this.resumesPending.length === 0) this.resumeStartedAt = undefined;
    this.armGapTimer();
  }

  private flushOutbox(): void {
    if (!this.welcomed) return;
    for (const entry of this.outbox.due(Date.now())) {
      const sent = this.write({ type: 'send', room: entry.room, body: entry.body, client_msg_id: entry.clientMsgId });
      if (!sent) break; // the socket is gone; detach() requeued everything
    }
    this.armOutboxTimer();
  }

  private armOutboxTimer(): void {
    const next = this.welcomed ? this.outbox.nextDeadline(this.config.sendTimeoutMs) : undefined;
    if (next === undefined) {
      this.clearTimer('outbox');
      return;
    }
    this.armTimer('outbox', next, () => {
      if (!this.welcomed) return;
      if (this.outbox.hasTimedOut(Date.now(), this.config.sendTimeoutMs)) {
        this.dropSocket('send timed out');
        return;
      }
      this.flushOutbox();
    });
  }

  /** Full-jitter delay for the n-th retry of a refused send, at least 50 ms. */
  private retryDelay(attempt: number): number {
    const ceiling = Math.min(this.config.maxRetryDelayMs, this.config.retryBaseMs * 2 ** Math.min(attempt, 20));
    return 50 + Math.floor(this.random() * ceiling);
  }

  private async postWithRetries(
    room: string,
    body: string,
    options: { from?: string; clientMsgId?: string },
  ): Promise<Message> {
    checkRoomId(room);
    checkBody(body);
    if (options.from !== undefined) checkUserId(options.from, 'from');
    const client_msg_id = options.clientMsgId === undefined ? newClientMsgId() : checkClientMsgId(options.clientMsgId);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.rest.postMessage(room, { body, client_msg_id, ...(options.from ? { from: options.from } : {}) });
      } catch (e) {
        const retryable =
          e instanceof ApiError && (e.status === 0 || e.status === 429 || e.status === 503 || e.status === 502 || e.status === 504);
        if (!retryable || attempt >= this.config.restPostAttempts) throw e;
        await sleep(this.retryDelay(attempt));
      }
    }
  }

  // --- rooms, ordering and gaps ------------------------------------------------

  /**
   * Tracks a room; an unknown starting point (a v1.0 server's Room has no
   * `last_seq`) is looked up: the room's latest seq.
   */
  private async learnRoom(room: string, lastSeq: number | undefined): Promise<void> {
    if (this.cursors.isTracked(room)) {
      if (lastSeq !== undefined) this.deliver(this.cursors.track(room, lastSeq, Date.now()));
      return;
    }
    this.cursors.track(room, lastSeq, Date.now());
    if (lastSeq === undefined) await this.lookUpStart(room);
  }

  private async lookUpStart(room: string): Promise<void> {
    try {
      const latest = await this.rest.history(room, { limit: 1 });
      this.deliver(this.cursors.track(room, latest[0]?.seq ?? 0, Date.now()));
    } catch {
      // The room starts at the first message that arrives instead.
    }
  }

  private armGapTimer(): void {
    let next = this.cursors.nextGapDue(this.config.gapFillDelayMs);
    if (next === undefined) {
      this.clearTimer('gaps');
      return;
    }
    if (this.resumeStartedAt !== undefined) {
      // A resume replays what is missing anyway; fill only if it stalls.
      next = Math.max(next, this.resumeStartedAt + this.config.resumeTimeoutMs);
    }
    this.armTimer('gaps', next, () => this.fillDueGaps());
  }

  private fillDueGaps(): void {
    const now = Date.now();
    if (this.resumeStartedAt !== undefined && now - this.resumeStartedAt >= this.config.resumeTimeoutMs) {
      this.resumeStartedAt = undefined;
    }
    for (const gap of this.cursors.dueGaps(now, this.config.gapFillDelayMs)) {
      if (!this.fills.has(gap.room)) void this.fillGap(gap);
    }
    this.armGapTimer();
  }

  /** Fetches a gap's messages from history; what history lacks (trimmed) is skipped. */
  private async fillGap(gap: Gap): Promise<void> {
    this.fills.add(gap.room);
    try {
      let after = gap.after;
      while (after < gap.before - 1) {
        const limit = Math.min(200, gap.before - 1 - after);
        const page = await this.rest.history(gap.room, { after, before: gap.before, limit });
        if (page.length === 0) break;
        for (const message of page) this.deliver(this.cursors.offer(message, Date.now()));
        after = page[page.length - 1]!.seq;
      }
      this.deliver(this.cursors.skipGap(gap, Date.now()));
    } catch (e) {
      const error = asChatError(e);
      if (error instanceof ApiError && (error.status === 403 || error.status === 404)) {
        this.deliver(this.cursors.skipGap(gap, Date.now()));
      } else {
        this.cursors.postponeGap(gap.room, Date.now());
        this.events.emit('error', error);
      }
    } finally {
      this.fills.delete(gap.room);
      this.armGapTimer();
    }
  }

  // --- liveness -------------------------------------------------------------------

  /** Pings a silent connection, and replaces it when the ping goes unanswered. */
  private checkLiveness(): void {
    if (!this.welcomed) return;
    const now = Date.now();
    const { pingIntervalMs, pongTimeoutMs } = this.config;
    const silent = now - this.lastFrameAt;
    if (silent >= pingIntervalMs + pongTimeoutMs) {
      this.dropSocket('connection silent');
      return;
    }
    if (silent >= pingIntervalMs && !this.pingOutstanding) {
      this.pingOutstanding = this.write({ type: 'ping', nonce: now });
    }
    const next = silent < pingIntervalMs ? this.lastFrameAt + pingIntervalMs : this.lastFrameAt + pingIntervalMs + pongTimeoutMs;
    this.armTimer('liveness', next, () => this.checkLiveness());
  }

  // --- timers ---------------------------------------------------------------------

  private armTimer(name: string, at: number, run: () => void): void {
    this.clearTimer(name);
    const delay = Math.max(0, at - Date.now());
    this.timers.set(
      name,
      setTimeout(() => {
        this.timers.delete(name);
        run();
      }, delay),
    );
  }

  private clearTimer(name: string): void {
    const timer = this.timers.get(name);
    if (timer !== undefined) {
      clearTimeout(timer);
      this.timers.delete(name);
    }
  }
}

function noop(): void {}

function closeQuietly(socket: WebSocketLike, code: number, reason: string): void {
  try {
    socket.close(code, reason);
  } catch {
    // Already closing or closed.
  }
}

function asChatError(e: unknown): ChatError {
  if (e instanceof ChatError) return e;
  return new ChatError('network', e instanceof Error ? e.message : String(e), { cause: e });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** 128 random bits: unique without coordination, stable across retries. */
export function newClientMsgId(): string {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return 'c_' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
