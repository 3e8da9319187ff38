import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatClient } from '../src/client.js';
import { ClosedError, InvalidArgumentError, SendError } from '../src/errors.js';
import { FakeServer, seededRandom } from './fake-server.js';
import { bySeq, clientOf, runUntil, settle } from './helpers.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

async function connected(server: FakeServer, user: string, options = {}) {
  const c = clientOf(server, user, options);
  const done = c.client.connect();
  await vi.advanceTimersByTimeAsync(100);
  await done;
  return c;
}

describe('ChatClient against a fake server', () => {
  it('connects with a ticket, reports states, and resolves send with the ack', async () => {
    const server = new FakeServer(seededRandom(1));
    const room = server.createRoom('general', 'alice', ['bob']);
    const alice = await connected(server, 'alice');
    expect(alice.states).toEqual(['connecting', 'connected']);
    expect(alice.client.session).toMatchObject({ user: 'alice', serverId: 'fake-1' });
    const ack = alice.client.send(room, 'hi');
    await vi.advanceTimersByTimeAsync(10);
    await expect(ack).resolves.toMatchObject({ room, seq: 1 });
    expect(bySeq(alice.seen, room)).toEqual([1]);
    alice.client.close();
    expect(alice.states.at(-1)).toBe('disconnected');
  });

  it('rejects invalid arguments before anything is sent', async () => {
    const server = new FakeServer(seededRandom(2));
    const room = server.createRoom('general', 'alice', []);
    const alice = await connected(server, 'alice');
    await expect(alice.client.send(room, '')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.send(room, 'x'.repeat(4097))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.send(room, 'é'.repeat(2049))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.send('', 'x')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.markRead(room, -1)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.markRead(room, 1.5)).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.members.add(room, 'bad user')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.client.rooms.create({ name: 'x', members: ['<img src=x>'] })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(alice.client.messages.before(room, 5, 0)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(() => alice.client.markReadLive(room, -3)).toThrow(InvalidArgumentError);
    await vi.advanceTimersByTimeAsync(100);
    const conn = server.liveConnections('alice')[0]!;
    expect(conn.received.filter((f) => f['type'] === 'send')).toEqual([]);
    expect(server.restCalls.filter((c) => !c.startsWith('POST /v1/connect'))).toEqual([]);
  });

  it('rejects a send the server forbids with a typed SendError', async () => {
    const server = new FakeServer(seededRandom(3));
    const room = server.createRoom('private', 'bob', []);
    const alice = await connected(server, 'alice');
    const send = alice.client.send(room, 'let me in');
    const outcome = expect(send).rejects.toSatisfy((e) => e instanceof SendError && e.code === 'forbidden');
    await vi.advanceTimersByTimeAsync(10);
    await outcome;
  });

  it('retries rate_limited, unavailable and unanswered sends with the same client_msg_id, storing once', async () => {
    const server = new FakeServer(seededRandom(4));
    const room = server.createRoom('general', 'alice', []);
    const alice = await connected(server, 'alice');
    server.scriptedSendFaults.push('rate_limited', 'unavailable', 'unavailable_after_store', 'no_answer', 'drop_before_ack');
    const ack = alice.client.send(room, 'once');
    let settled = false;
    void ack.then(() => (settled = true));
    await runUntil(() => settled, 60_000);
    const result = await ack;
    expect(server.roomOf(room).messages).toHaveLength(1);
    expect(result).toMatchObject({ room, seq: 1, clientMsgId: server.roomOf(room).messages[0]!.client_msg_id });
    const ids = server.allConnections.flatMap((c) => c.received.filter((f) => f['type'] === 'send').map((f) => f['client_msg_id']));
    expect(ids.length).toBeGreaterThanOrEqual(6);
    expect(new Set(ids).size).toBe(1);
    expect(bySeq(alice.seen, room)).toEqual([1]);
  });

  it('resumes every known room from the last seq it handed out after a drop', async () => {
    const server = new FakeServer(seededRandom(5));
    const room = server.createRoom('general', 'alice', ['bob']);
    const bob = await connected(server, 'bob');
    await settle(bob.client.rooms.list());
    server.append(room, 'alice', 'one', null);
    server.route(server.roomOf(room).messages[0]!);
    await vi.advanceTimersByTimeAsync(10);
    expect(bySeq(bob.seen, room)).toEqual([1]);
    server.liveConnections('bob')[0]!.kill(1006);
    for (const body of ['two', 'three']) server.append(room, 'alice', body, null);
    await runUntil(() => bob.seen.length === 3, 10_000);
    expect(bySeq(bob.seen, room)).toEqual([1, 2, 3]);
    expect(bob.states).toEqual(['connecting', 'connected', 'reconnecting', 'connected']);
    const resume = server.allConnections[1]!.received.find((f) => f['type'] === 'resume');
    expect(resume).toEqual({ type: 'resume', rooms: { [room]: 1 } });
  });

  it('honours reconnect.after_ms and close 1012', async () => {
    const server = new FakeServer(seededRandom(6));
    const alice = await connected(server, 'alice');
    const conn = server.liveConnections('alice')[0]!;
    conn.deliver({ type: 'reconnect', reason: 'draining', after_ms: 1500 });
    conn.kill(1012, false);
    await vi.advanceTimersByTimeAsync(1400);
    expect(server.allConnections).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(300);
    expect(server.allConnections).toHaveLength(2);
    expect(alice.client.state).toBe('connected');
  });

  it('replaces a connection that went silent (frozen server)', async () => {
    const server = new FakeServer(seededRandom(7));
    const alice = await connected(server, 'alice');
    server.liveConnections('alice')[0]!.frozen = true;
    await runUntil(() => server.allConnections.length === 2 && alice.client.state === 'connected', 20_000);
    expect(server.allConnections).toHaveLength(2);
    expect(alice.states).toContain('reconnecting');
  });

  it('fills a gap that stays open from REST history', async () => {
    const server = new FakeServer(seededRandom(8));
    const room = server.createRoom('general', 'alice', ['bob']);
    const bob = await connected(server, 'bob');
    bob.client.track(room, 0);
    const conn = server.liveConnections('bob')[0]!;
    const [m1, m2, m3] = ['a', 'b', 'c'].map((b) => server.append(room, 'alice', b, null).message);
    conn.deliver({ type: 'message', ...m3! });
    conn.deliver({ type: 'message', ...m1! });
    await vi.advanceTimersByTimeAsync(100);
    expect(bySeq(bob.seen, room)).toEqual([1]);
    await vi.advanceTimersByTimeAsync(1000);
    expect(bySeq(bob.seen, room)).toEqual([1, 2, 3]);
    expect(server.restCalls.some((c) => c.includes(`/v1/rooms/${room}/messages?after=1&before=3`))).toBe(true);
    conn.deliver({ type: 'message', ...m2! });
    await vi.advanceTimersByTimeAsync(100);
    expect(bySeq(bob.seen, room)).toEqual([1, 2, 3]);
  });

  it('reports malformed and unknown frames and carries on', async () => {
    const server = new FakeServer(seededRandom(9));
    const room = server.createRoom('general', 'alice', []);
    const alice = await connected(server, 'alice');
    const conn = server.liveConnections('alice')[0]!;
    conn.deliver('not json');
    conn.deliver('{"type":"from_the_future","x":1}');
    conn.deliver('{"type":"message","room":"r","seq":"one"}');
    conn.deliver(JSON.stringify({ type: 'message', ...server.append(room, 'alice', 'ok', null).message }));
    await vi.advanceTimersByTimeAsync(10);
    expect(alice.problems.map((p) => p.kind)).toEqual(['not_json', 'unknown_type', 'bad_field']);
    expect(bySeq(alice.seen, room)).toEqual([1]);
    expect(alice.client.state).toBe('connected');
  });

  it('asks for a new token after a 401 and uses it', async () => {
    const server = new FakeServer(seededRandom(10));
    let n = 0;
    const c = clientOf(server, 'alice', {
      getToken: () => (++n === 1 ? 'tok:alice#old' : 'tok:alice'),
    });
    server.revokedTokens.add('tok:alice#old');
    const done = c.client.connect();
    await vi.advanceTimersByTimeAsync(100);
    await done;
    expect(n).toBe(2);
    expect(c.client.state).toBe('connected');
  });

  it('calls getToken again when the token expires', async () => {
    const server = new FakeServer(seededRandom(11));
    const jwt = (exp: number) => `h.${btoa(JSON.stringify({ sub: 'alice', exp })).replace(/=+$/, '')}.s`;
    const issued: string[] = [];
    const c = clientOf(server, 'alice', {
      getToken: () => {
        const t = jwt(Math.floor(Date.now() / 1000) + 60);
        issued.push(t);
        return t;
      },
      fetch: (url, init) => {
        const headers = new Headers(init?.headers);
        if (headers.get('authorization')?.startsWith('Bearer h.')) headers.set('authorization', 'Bearer tok:alice');
        return server.fetch(url, { ...init, headers });
      },
    });
    
    await settle(c.client.rooms.list());
    expect(issued).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(55_000);
    await settle(c.client.rooms.list());
    expect(issued).toHaveLength(2);
  });

  it('rejects pending sends with ClosedError on close, and sends before connect', async () => {
    const server = new FakeServer(seededRandom(12));
    const room = server.createRoom('general', 'alice', []);
    const idle = clientOf(server, 'alice');
    await expect(idle.client.send(room, 'x')).rejects.toBeInstanceOf(ClosedError);
    const alice = await connected(server, 'alice');
    server.scriptedSendFaults.push('no_answer');
    const pending = alice.client.send(room, 'never acked');
    const outcome = expect(pending).rejects.toBeInstanceOf(ClosedError);
    await vi.advanceTimersByTimeAsync(10);
    alice.client.close();
    await outcome;
  });

  it('throttles typing and relays it to other members', async () => {
    const server = new FakeServer(seededRandom(13));
    const room = server.createRoom('general', 'alice', ['bob']);
    const alice = await connected(server, 'alice');
    const bob = await connected(server, 'bob');
    const typing: string[] = [];
    bob.client.on('typing', (t) => typing.push(t.user));
    expect(alice.client.typing(room)).toBe(true);
    expect(alice.client.typing(room)).toBe(false);
    await vi.advanceTimersByTimeAsync(10);
    expect(typing).toEqual(['alice']);
  });

  it('a listener that throws does not stop delivery', async () => {
    const server = new FakeServer(seededRandom(14));
    const room = server.createRoom('general', 'alice', []);
    const alice = await connected(server, 'alice');
    const thrown: unknown[] = [];
    const original = globalThis.queueMicrotask;
    globalThis.queueMicrotask = (fn) =>
      original(() => {
        try {
          fn();
        } catch (e) {
          thrown.push(e);
        }
      });
    try {
      alice.client.on('message', () => {
        throw new Error('app bug');
      });
      await settle(alice.client.send(room, "one")).catch(() => undefined);
      const p = alice.client.send(room, 'two');
      await vi.advanceTimersByTimeAsync(10);
      await p;
      expect(bySeq(alice.seen, room)).toEqual([1, 2]);
      expect(thrown.length).toBeGreaterThan(0);
    } finally {
      globalThis.queueMicrotask = original;
    }
  });

  it('works for REST without any WebSocket, and connect() says why it cannot', async () => {
    const server = new FakeServer(seededRandom(15));
    server.createRoom('general', 'billing', []);
    const service = new ChatClient({ apiUrl: 'http://fake', getToken: () => 'tok:billing', fetch: server.fetch });
    expect(await settle(service.rooms.list())).toHaveLength(1);
    await expect(service.connect()).rejects.toMatchObject({ code: 'invalid_argument' });
    expect(service.state).toBe('disconnected');
  });

  it('stops tracking a room the resume is refused for (no longer a member)', async () => {
    const server = new FakeServer(seededRandom(16));
    const mine = server.createRoom('mine', 'alice', []);
    const gone = server.createRoom('gone', 'bob', []);
    const alice = clientOf(server, 'alice', { cursors: { [mine]: 0, [gone]: 4 } });
    const done = alice.client.connect();
    await vi.advanceTimersByTimeAsync(100);
    await done;
    expect(alice.client.positions()).toEqual({ [mine]: 0 });
    expect(alice.errors.map((e) => e.code)).toEqual(['forbidden']);
  });
});
