/**
 * An in-memory stand-in for the chat service (REST through a `fetch`
 * function, WebSocket through a socket factory), driven by timers so tests
 * run under fake time. It keeps the contract's promises where tests rely
 * on them (one seq per stored message, dedup by sender and
 * `client_msg_id`, resume replays history) and breaks everything the
 * contract allows to break, at rates set by `Faults` and a seeded random
 * source: delays, dropped connections, drains with `reconnect` and 1012,
 * frozen servers, lost acks, `unavailable` and `rate_limited` refusals, and
 * (harsher than the real server) duplicate and lost live deliveries.
 */
import type { WebSocketLike } from '../src/transport.js';
import type { Message, Room, ServerFrame } from '../src/wire.js';

/** mulberry32: a small seeded PRNG. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Faults {
  /** Largest delay of one frame, each way (order per connection is kept). */
  maxDelayMs: number;
  /** Per send: refused with rate_limited / unavailable, nothing stored. */
  rateLimited: number;
  unavailable: number;
  /** Per send: stored, but answered `unavailable` and not routed. */
  unavailableAfterStore: number;
  /** Per send: stored and routed, then the connection drops before the ack. */
  dropBeforeAck: number;
  /** Per live delivery: sent twice / not sent. */
  duplicateDelivery: number;
  lostDelivery: number;
  /** Per REST call: 503. */
  restUnavailable: number;
  /** Per socket: refused before the welcome. */
  refuseSocket: number;
}

export const NO_FAULTS: Faults = {
  maxDelayMs: 0,
  rateLimited: 0,
  unavailable: 0,
  unavailableAfterStore: 0,
  dropBeforeAck: 0,
  duplicateDelivery: 0,
  lostDelivery: 0,
  restUnavailable: 0,
  refuseSocket: 0,
};

type ScriptedSendFault = 'rate_limited' | 'unavailable' | 'unavailable_after_store' | 'drop_before_ack' | 'no_answer';

interface StoredRoom {
  id: string;
  name: string;
  created_by: string;
  members: Set<string>;
  messages: Message[];
  dedup: Map<string, Message>;
  reads: Map<string, number>;
}

export class FakeConnection {
  alive = true;
  frozen = false;
  welcomed = false;
  /** Frames the client wrote, parsed. */
  readonly received: Record<string, unknown>[] = [];
  private outAt = 0;
  private inAt = 0;

  constructor(
    readonly server: FakeServer,
    readonly socket: FakeSocket,
    readonly user: string,
  ) {}

  /** Queues a frame to the client, keeping this connection's order. */
  deliver(frame: ServerFrame | string): void {
    if (!this.alive || this.frozen) return;
    const now = Date.now();
    this.outAt = Math.max(this.outAt, now + this.server.delay());
    const text = typeof frame === 'string' ? frame : JSON.stringify(frame);
    setTimeout(() => {
      if (this.socket.readyState === 1 && !this.frozen) this.socket.onmessage?.({ data: text });
    }, this.outAt - now);
  }

  /** A frame from the client reaches the server after a delay, in order. */
  incoming(text: string): void {
    if (!this.alive || this.frozen) return;
    const now = Date.now();
    this.inAt = Math.max(this.inAt, now + this.server.delay());
    setTimeout(() => {
      if (this.alive && !this.frozen) this.server.handle(this, text);
    }, this.inAt - now);
  }

  /** Closes from the server's side with `code` (after what is queued, unless abrupt). */
  kill(code = 1006, abrupt = true): void {
    if (!this.alive) return;
    const at = abrupt ? 0 : Math.max(0, this.outAt - Date.now()) + 1;
    this.alive = false;
    this.server.connections.delete(this);
    setTimeout(() => this.socket.closedByServer(code), at);
  }
}

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  connection: FakeConnection | undefined;

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('socket not open');
    this.connection?.incoming(data);
  }

  close(code = 1000, reason = ''): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    if (this.connection) {
      this.connection.alive = false;
      this.connection.server.connections.delete(this.connection);
    }
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }

  closedByServer(code: number): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
}

export class FakeServer {
  readonly rooms = new Map<string, StoredRoom>();
  readonly connections = new Set<FakeConnection>();
  readonly allConnections: FakeConnection[] = [];
  readonly tickets = new Map<string, string>();
  /** Tokens the server refuses (401). */
  readonly revokedTokens = new Set<string>();
  readonly restCalls: string[] = [];
  readonly scriptedSendFaults: ScriptedSendFault[] = [];
  faults: Faults;
  private nextTicket = 0;
  private nextRoom = 0;
  private nextMessage = 0;

  constructor(
    readonly random: () => number = Math.random,
    faults: Partial<Faults> = {},
  ) {
    this.faults = { ...NO_FAULTS, ...faults };
  }

  delay(): number {
    return Math.floor(this.random() * this.faults.maxDelayMs);
  }

  private chance(p: number): boolean {
    return p > 0 && this.random() < p;
  }

  // --- state helpers for tests ------------------------------------------------

  createRoom(name: string, createdBy: string, members: string[]): string {
    const id = `r_${++this.nextRoom}`;
    this.rooms.set(id, {
      id,
      name,
      created_by: createdBy,
      members: new Set([createdBy, ...members]),
      messages: [],
      dedup: new Map(),
      reads: new Map(),
    });
    return id;
  }

  roomOf(id: string): StoredRoom {
    const room = this.rooms.get(id);
    if (!room) throw new Error(`no room ${id}`);
    return room;
  }

  liveConnections(user?: string): FakeConnection[] {
    return [...this.connections].filter((c) => user === undefined || c.user === user);
  }

  /** Appends like the real store: dedup per sender and client_msg_id. */
  append(roomId: string, from: string, body: string, clientMsgId: string | null): { message: Message; duplicate: boolean } {
    const room = this.roomOf(roomId);
    if (clientMsgId) {
      const existing = room.dedup.get(`${from}\u0000${clientMsgId}`);
      if (existing) return { message: existing, duplicate: true };
    }
    const message: Message = {
      room: roomId,
      seq: room.messages.length + 1,
      id: `m_${++this.nextMessage}`,
      from,
      body,
      ts: Date.now(),
      client_msg_id: clientMsgId,
    };
    room.messages.push(message);
    if (clientMsgId) room.dedup.set(`${from}\u0000${clientMsgId}`, message);
    return { message, duplicate: false };
  }

  route(message: Message): void {
    const room = this.roomOf(message.room);
    for (const conn of this.connections) {
      if (!conn.welcomed || !room.members.has(conn.user)) continue;
      if (this.chance(this.faults.lostDelivery)) continue;
      conn.deliver({ type: 'message', ...message });
      if (this.chance(this.faults.duplicateDelivery)) conn.deliver({ type: 'message', ...message });
    }
  }

  // --- WebSocket --------------------------------------------------------------

  readonly openSocket = (url: string): WebSocketLike => {
    const socket = new FakeSocket();
    const ticket = new URL(url).searchParams.get('ticket') ?? '';
    const user = this.tickets.get(ticket);
    this.tickets.delete(ticket);
    setTimeout(() => {
      if (socket.readyState !== 0) return;
      if (user === undefined || this.chance(this.faults.refuseSocket)) {
        socket.readyState = 3;
        socket.onerror?.({});
        socket.onclose?.({ code: 1006, reason: '' });
        return;
      }
      const conn = new FakeConnection(this, socket, user);
      socket.connection = conn;
      this.connections.add(conn);
      this.allConnections.push(conn);
      socket.readyState = 1;
      socket.onopen?.({});
      conn.welcomed = true;
      conn.deliver({ type: 'welcome', server_id: 'fake-1', user, session: `s_${this.allConnections.length}` });
    }, this.delay());
    return socket;
  };

  handle(conn: FakeConnection, text: string): void {
    const frame = JSON.parse(text) as Record<string, unknown>;
    conn.received.push(frame);
    switch (frame['type']) {
      case 'send':
        this.onSend(conn, frame['room'] as string, frame['body'] as string, (frame['client_msg_id'] as string) ?? null);
        return;
      case 'resume': {
        const rooms = frame['rooms'] as Record<string, number>;
        const resumed: Record<string, number> = {};
        for (const [id, from] of Object.entries(rooms)) {
          const room = this.rooms.get(id);
          if (!room || !room.members.has(conn.user)) {
            conn.deliver({ type: 'error', code: 'forbidden', message: `not a member of room ${id}`, client_msg_id: null });
            continue;
          }
          for (const m of room.messages) if (m.seq > from) conn.deliver({ type: 'message', ...m });
          resumed[id] = room.messages.length;
        }
        conn.deliver({ type: 'resumed', rooms: resumed });
        return;
      }
      case 'typing':
        for (const other of this.connections) {
          if (other !== conn && this.roomOf(frame['room'] as string).members.has(other.user)) {
            other.deliver({ type: 'typing', room: frame['room'] as string, user: conn.user });
          }
        }
        return;
      case 'ping':
        conn.deliver({ type: 'pong', nonce: frame['nonce'] });
        return;
      case 'read':
        return;
      default:
        conn.deliver({ type: 'error', code: 'invalid_frame', message: 'unknown frame type', client_msg_id: null });
    }
  }

  private onSend(conn: FakeConnection, roomId: string, body: string, clientMsgId: string | null): void {
    const error = (code: 'forbidden' | 'rate_limited' | 'unavailable' | 'invalid_request', message: string) =>
      conn.deliver({ type: 'error', code, message, client_msg_id: clientMsgId });
    const room = this.rooms.get(roomId);
    if (!room || !room.members.has(conn.user)) return error('forbidden', 'not a member of this room');
    if (new TextEncoder().encode(body).length > 4096 || body.length === 0) return error('invalid_request', 'bad body');
    const scripted = this.scriptedSendFaults.shift();
    if (scripted === 'no_answer') return;
    if (scripted === 'rate_limited' || (!scripted && this.chance(this.faults.rateLimited))) {
      return error('rate_limited', 'slow down');
    }
    if (scripted === 'unavailable' || (!scripted && this.chance(this.faults.unavailable))) {
      return error('unavailable', 'not stored');
    }
    const { message } = this.append(roomId, conn.user, body, clientMsgId);
    if (scripted === 'unavailable_after_store' || (!scripted && this.chance(this.faults.unavailableAfterStore))) {
      return error('unavailable', 'stored but not confirmed');
    }
    this.route(message);
    if (scripted === 'drop_before_ack' || (!scripted && this.chance(this.faults.dropBeforeAck))) {
      conn.kill(1006);
      return;
    }
    conn.deliver({ type: 'ack', client_msg_id: message.client_msg_id, room: message.room, seq: message.seq, id: message.id });
  }

  // --- REST -------------------------------------------------------------------

  readonly fetch = async (input: string, init: RequestInit = {}): Promise<Response> => {
    await new Promise((resolve) => setTimeout(resolve, this.delay()));
    const url = new URL(input);
    const method = init.method ?? 'GET';
    this.restCalls.push(`${method} ${url.pathname}${url.search}`);
    const json = (status: number, body: unknown) =>
      new Response(body === undefined ? null : JSON.stringify(body), {
        status,
        headers: { 'content-type': 'application/json' },
      });
    const fail = (status: number, code: string) => json(status, { error: { code, message: code } });
    const auth = new Headers(init.headers).get('authorization') ?? '';
    const token = auth.replace(/^Bearer /, '');
    if (!token.startsWith('tok:') || this.revokedTokens.has(token)) return fail(401, 'unauthorized');
    const user = token.slice('tok:'.length);
    if (this.chance(this.faults.restUnavailable)) return fail(503, 'unavailable');
    const body = init.body ? (JSON.parse(String(init.body)) as Record<string, unknown>) : {};
    const parts = url.pathname.split('/').filter(Boolean);
    const roomView = (r: StoredRoom): Room => ({
      id: r.id,
      name: r.name,
      created_by: r.created_by,
      created_at: 0,
      member_count: r.members.size,
      last_seq: r.messages.length,
      read_seq: r.reads.get(user) ?? 0,
      unread: r.messages.length - (r.reads.get(user) ?? 0),
    });

    if (method === 'POST' && url.pathname === '/v1/connect') {
      const ticket = `t_${++this.nextTicket}`;
      this.tickets.set(ticket, user);
      return json(200, { url: 'ws://fake/ws', ticket, server_id: 'fake-1', expires_in_ms: 30000 });
    }
    if (method === 'GET' && url.pathname === '/v1/rooms') {
      return json(200, { rooms: [...this.rooms.values()].filter((r) => r.members.has(user)).map(roomView) });
    }
    if (method === 'POST' && url.pathname === '/v1/rooms') {
      const id = this.createRoom(String(body['name']), user, (body['members'] as string[]) ?? []);
      return json(201, roomView(this.roomOf(id)));
    }
    if (parts[0] === 'v1' && parts[1] === 'rooms' && parts[2]) {
      const room = this.rooms.get(parts[2]);
      if (!room) return fail(404, 'not_found');
      if (!room.members.has(user)) return fail(403, 'forbidden');
      if (method === 'GET' && parts.length === 3) return json(200, roomView(room));
      if (parts[3] === 'messages' && method === 'GET') {
        const after = url.searchParams.get('after');
        const before = url.searchParams.get('before');
        const limit = Number(url.searchParams.get('limit') ?? 50);
        let list = room.messages;
        if (after !== null) {
          list = list.filter((m) => m.seq > Number(after));
          list = list.slice(0, limit);
          if (before !== null) list = list.filter((m) => m.seq < Number(before));
        } else if (before !== null) {
          list = list.filter((m) => m.seq < Number(before)).slice(-limit);
        } else {
          list = list.slice(-limit);
        }
        return json(200, { messages: list });
      }
      if (parts[3] === 'messages' && method === 'POST') {
        const { message, duplicate } = this.append(room.id, user, String(body['body']), (body['client_msg_id'] as string) ?? null);
        if (!duplicate) this.route(message);
        return json(201, message);
      }
      if (parts[3] === 'read' && method === 'PUT') {
        const seq = Math.min(Number(body['seq']), room.messages.length);
        room.reads.set(user, Math.max(room.reads.get(user) ?? 0, seq));
        return json(200, { room: room.id, read_seq: room.reads.get(user) });
      }
    }
    return fail(404, 'not_found');
  };
}
