/**
 * The SDK against a real local system: spawns `chat-local` (env
 * `CHAT_LOCAL_BIN`, default `../../target/debug/chat-local` from this
 * package) on free loopback ports, waits for it, and drives two SDK clients
 * through rooms, chat both ways, history paging and a reconnect with
 * resume. A missing binary fails the run: it is never skipped.
 *
 * Run with `npm run test:integration` (after `cargo build --bin chat-local`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { freePort } from './ports.js';
import { ChatClient, fetchDevToken, InvalidArgumentError, SendError } from '../src/index.js';
import type { ConnectionState, Message } from '../src/index.js';

const BIN = process.env['CHAT_LOCAL_BIN'] ?? fileURLToPath(new URL('../../../target/debug/chat-local', import.meta.url));

let child: ChildProcess | undefined;
let api = '';
let output = '';

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child?.exitCode != null) throw new Error(`chat-local exited (${child.exitCode}) while waiting for ${what}:\n${output}`);
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}:\n${output}`);
}

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  return waitFor(what, async () => check(), timeoutMs);
}

beforeAll(async () => {
  if (!existsSync(BIN)) {
    throw new Error(`chat-local binary not found at ${BIN}: build it (cargo build --bin chat-local) or set CHAT_LOCAL_BIN`);
  }
  const [apiPort, chatA, chatB] = [await freePort(), await freePort(), await freePort()];
  api = `http://127.0.0.1:${apiPort}`;
  child = spawn(BIN, ['--api-port', String(apiPort), '--chat-ports', `${chatA},${chatB}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  await waitFor('/readyz', async () => (await fetch(`${api}/readyz`)).ok);
  await waitFor('two ready chat servers', async () => {
    const token = (await fetchDevToken(api, 'probe')).token;
    const servers = await new ChatClient({ apiUrl: api, getToken: () => token, WebSocket }).servers();
    return servers.filter((s) => s.state === 'ready').length === 2;
  });
});

afterAll(async () => {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((r) => child!.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child?.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
});

/** A connected SDK client as `user`, recording what it sees and what it writes. */
async function user(name: string, options: { random?: () => number } = {}) {
  const sockets: WebSocket[] = [];
  const written: unknown[][] = [];
  const seen: Message[] = [];
  const states: ConnectionState[] = [];
  const chat = new ChatClient({
    apiUrl: api,
    getToken: async () => (await fetchDevToken(api, name)).token,
    webSocketFactory: (url) => {
      const socket = new WebSocket(url);
      const frames: unknown[] = [];
      written.push(frames);
      const send = socket.send.bind(socket);
      socket.send = ((data: string) => {
        frames.push(JSON.parse(data));
        send(data);
      }) as typeof socket.send;
      sockets.push(socket);
      return socket;
    },
    ...options,
  });
  chat.on('message', (m) => seen.push(m));
  chat.on('state', (s) => states.push(s));
  await chat.connect();
  return { chat, sockets, written, seen, states, name };
}

const inRoom = (list: Message[], room: string) => list.filter((m) => m.room === room);

describe('SDK against chat-local (contract v1.0)', () => {
  it('two users create a room and chat both ways, each message seen once and in order', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    expect(alice.chat.state).toBe('connected');
    expect(alice.chat.session?.user).toBe('alice');
    const room = await alice.chat.rooms.create({ name: 'general', members: ['bob'] });
    expect(room).toMatchObject({ name: 'general', created_by: 'alice', member_count: 2 });
    expect((await bob.chat.rooms.list()).map((r) => r.id)).toContain(room.id);

    const a1 = await alice.chat.send(room.id, 'hi bob');
    expect(a1).toMatchObject({ room: room.id, seq: 1 });
    const b1 = await bob.chat.send(room.id, 'hi alice');
    expect(b1.seq).toBe(2);
    const a2 = await alice.chat.send(room.id, 'how are you? ünïcødé ✓');
    await until('both see three messages', () => inRoom(alice.seen, room.id).length === 3 && inRoom(bob.seen, room.id).length === 3);
    for (const who of [alice, bob]) {
      expect(inRoom(who.seen, room.id).map((m) => [m.seq, m.from, m.body])).toEqual([
        [1, 'alice', 'hi bob'],
        [2, 'bob', 'hi alice'],
        [3, 'alice', 'how are you? ünïcødé ✓'],
      ]);
    }
    expect(a2.id).toBe(inRoom(bob.seen, room.id)[2]!.id);

    const members = await bob.chat.members.list(room.id);
    expect(members.map((m) => m.user).sort()).toEqual(['alice', 'bob']);
    expect(members.every((m) => m.online)).toBe(true);
    alice.chat.close();
    bob.chat.close();
  });

  it('rejects bad arguments before sending, and a non-member send with a typed error', async () => {
    const alice = await user('alice');
    const carol = await user('carol');
    const room = await alice.chat.rooms.create({ name: 'private' });
    await expect(alice.chat.send(room.id, '')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.chat.send(room.id, 'x'.repeat(4097))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(alice.chat.members.add(room.id, 'no spaces allowed')).rejects.toBeInstanceOf(InvalidArgumentError);
    const refused = await carol.chat.send(room.id, 'let me in').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SendError);
    expect((refused as SendError).code).toBe('forbidden');
    alice.chat.close();
    carol.chat.close();
  });

  it('pages history backwards with before and forwards with after', async () => {
    const alice = await user('alice');
    const room = await alice.chat.rooms.create({ name: 'history' });
    const acks = await Promise.all(Array.from({ length: 25 }, (_, i) => alice.chat.send(room.id, `m${i}`)));
    expect(acks.map((a) => a.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));

    const latest = await alice.chat.messages.latest(room.id, 10);
    expect(latest.map((m) => m.seq)).toEqual([16, 17, 18, 19, 20, 21, 22, 23, 24, 25]);
    const pages: number[][] = [latest.map((m) => m.seq)];
    for (let oldest = latest[0]!.seq; ; ) {
      const page = await alice.chat.messages.before(room.id, oldest, 10);
      if (page.length === 0) break;
      pages.unshift(page.map((m) => m.seq));
      oldest = page[0]!.seq;
    }
    expect(pages).toEqual([
      [1, 2, 3, 4, 5],
      [6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
      [16, 17, 18, 19, 20, 21, 22, 23, 24, 25],
    ]);
    const after = await alice.chat.messages.after(room.id, 20, 200);
    expect(after.map((m) => m.seq)).toEqual([21, 22, 23, 24, 25]);
    alice.chat.close();
  });

  it('resumes after the WebSocket is killed: what was sent meanwhile arrives once, in order', async () => {
    const alice = await user('alice');
    // Bob's first reconnect waits close to 2 s, so alice's messages land while he is away.
    const bob = await user('bob', { random: () => 0.99 });
    const room = await alice.chat.rooms.create({ name: 'resume', members: ['bob'] });
    await bob.chat.rooms.list();
    await alice.chat.send(room.id, 'before');
    await until('bob sees the first message', () => inRoom(bob.seen, room.id).length === 1);

    bob.sockets[0]!.terminate();
    await until('bob notices', () => bob.chat.state === 'reconnecting');
    for (const body of ['while away 1', 'while away 2', 'while away 3']) {
      await alice.chat.messages.post(room.id, body);
    }
    await until('bob is back and has everything', () => bob.chat.state === 'connected' && inRoom(bob.seen, room.id).length === 4);
    expect(inRoom(bob.seen, room.id).map((m) => m.body)).toEqual(['before', 'while away 1', 'while away 2', 'while away 3']);
    expect(bob.states).toEqual(['connecting', 'connected', 'reconnecting', 'connected']);
    expect(bob.sockets).toHaveLength(2);
    const resume = bob.written[1]!.find((f) => (f as { type: string }).type === 'resume') as { rooms: Record<string, number> };
    expect(resume.rooms[room.id]).toBe(1);

    // Live again both ways after the resume.
    await bob.chat.send(room.id, 'back');
    await until('alice sees it', () => inRoom(alice.seen, room.id).some((m) => m.body === 'back'));
    await new Promise((r) => setTimeout(r, 200));
    expect(inRoom(bob.seen, room.id).map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    alice.chat.close();
    bob.chat.close();
  });

  it('posts over REST exactly once per client_msg_id', async () => {
    const alice = await user('alice');
    const room = await alice.chat.rooms.create({ name: 'rest' });
    const first = await alice.chat.messages.post(room.id, 'once', { clientMsgId: 'fixed-id-1' });
    const again = await alice.chat.messages.post(room.id, 'once', { clientMsgId: 'fixed-id-1' });
    expect(again).toEqual(first);
    expect((await alice.chat.messages.latest(room.id)).length).toBe(1);
    alice.chat.close();
  });
});

describe('SDK against chat-local (contract v1.1)', () => {
  it('read state: markRead moves the marker, other members get a read event, rooms carry unread', async () => {
    const alice = await user('alice');
    const bob = await user('bob');
    const room = await alice.chat.rooms.create({ name: 'reads', members: ['bob'] });
    await bob.chat.rooms.list();
    const reads: { user: string; seq: number }[] = [];
    alice.chat.on('read', (r) => r.room === room.id && reads.push(r));
    for (const body of ['a', 'b', 'c']) await alice.chat.send(room.id, body);
    const listed = (await bob.chat.rooms.list()).find((r) => r.id === room.id)!;
    expect(listed).toMatchObject({ last_seq: 3, read_seq: 0, unread: 3 });
    expect(await bob.chat.markRead(room.id, 2)).toEqual({ room: room.id, read_seq: 2 });
    await until('alice gets the read receipt', () => reads.some((r) => r.user === 'bob' && r.seq === 2));
    expect(await bob.chat.markRead(room.id, 1)).toEqual({ room: room.id, read_seq: 2 });
    expect(bob.chat.markReadLive(room.id, 3)).toBe(true);
    await until('alice gets the live read', () => reads.some((r) => r.user === 'bob' && r.seq === 3));
    const marks = await alice.chat.rooms.reads(room.id);
    expect(marks.find((r) => r.user === 'bob')?.seq).toBe(3);
    expect((await bob.chat.rooms.get(room.id)).unread).toBe(0);
    alice.chat.close();
    bob.chat.close();
  });

  it('presence: other members see a user go offline and come back', async () => {
    const alice = await user('alice');
    const room = await alice.chat.rooms.create({ name: 'presence', members: ['dave'] });
    const events: { user: string; online: boolean }[] = [];
    alice.chat.on('presence', (p) => p.room === room.id && events.push(p));
    const dave = await user('dave');
    await until('dave online', () => events.some((e) => e.user === 'dave' && e.online));
    dave.chat.close();
    await until('dave offline', () => events.some((e) => e.user === 'dave' && !e.online));
    alice.chat.close();
  });

  it('service tokens: create for a user, publish as a member, list a user’s rooms; no sessions', async () => {
    const service = (await fetchDevToken(api, 'billing', { scope: 'service' })).token;
    const billing = new ChatClient({ apiUrl: api, getToken: () => service, WebSocket });
    const room = await billing.rooms.create({ name: 'invoices', members: ['alice'], created_by: 'alice' });
    expect(room.created_by).toBe('alice');
    const posted = await billing.messages.post(room.id, 'invoice ready', { from: 'alice' });
    expect(posted.from).toBe('alice');
    expect((await billing.rooms.ofUser('alice')).map((r) => r.id)).toContain(room.id);
    const errors: string[] = [];
    billing.on('error', (e) => errors.push(e.code));
    await expect(billing.connect()).rejects.toMatchObject({ code: 'forbidden' });
    expect(billing.state).toBe('disconnected');
  });
});
