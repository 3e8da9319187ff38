/**
 * The fault run in cluster mode: SDK clients in several rooms send and
 * receive while one chat server is SIGKILLed and another frozen (SIGSTOP,
 * then SIGCONT). Every acknowledged message must reach every member's SDK
 * instance exactly once and in order; every send must be acknowledged and
 * stored once. The counts are printed.
 *
 * Needs: the `api-server` and `chat-server` binaries (env `API_SERVER_BIN`,
 * `CHAT_SERVER_BIN`, default `../../target/debug/...`) and a Redis Cluster:
 * `CHAT_REDIS_URLS` if set, otherwise one started here with
 * `../../scripts/redis-cluster.sh` on `REDIS_CLUSTER_BASE_PORT` (default
 * 7400) in a temporary directory, and stopped afterwards. Anything missing
 * fails the run. Run with `npm run test:faults`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import WebSocket from 'ws';
import { freePort } from './ports.js';
import { ChatClient, fetchDevToken } from '../src/index.js';
import type { Message, SendAck } from '../src/index.js';

const repo = (path: string) => fileURLToPath(new URL(`../../../${path}`, import.meta.url));
const API_BIN = process.env['API_SERVER_BIN'] ?? repo('target/debug/api-server');
const CHAT_BIN = process.env['CHAT_SERVER_BIN'] ?? repo('target/debug/chat-server');
const REDIS_SCRIPT = repo('scripts/redis-cluster.sh');

// Users of this run only: a shared Redis Cluster keeps the rooms of earlier runs.
const RUN = Math.random().toString(36).slice(2, 8);
const user = (n: number): string => `u${n}-${RUN}`;
const USERS = [0, 1, 2, 3, 4, 5].map(user);
const ROOMS: string[][] = [
  [0, 1, 2, 3],
  [2, 3, 4, 5],
  [0, 1, 4, 5],
].map((members) => members.map(user));
const SEND_INTERVAL_MS = 150;
const SEND_FOR_MS = 12_000;
const KILL_AT_MS = 3_000;
const FREEZE_AT_MS = 5_000;
const THAW_AT_MS = 10_000;

interface Proc {
  name: string;
  child: ChildProcess;
  log: string;
  port: number;
}

const procs: Proc[] = [];
let redisDir: string | undefined;
let redisEnv: NodeJS.ProcessEnv = {};
let redisUrls = '';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const p of procs) {
      if (p.child.exitCode !== null && p.child.signalCode === null) {
        throw new Error(`${p.name} exited (${p.child.exitCode}) while waiting for ${what}:\n${p.log.slice(-3000)}`);
      }
    }
    if (await Promise.resolve(check()).catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function start(name: string, bin: string, args: string[], port: number): Proc {
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      CHAT_REDIS_URLS: redisUrls,
      CHAT_JWT_SECRET: 'faults-jwt-secret',
      CHAT_TICKET_SECRET: 'faults-ticket-secret',
      CHAT_INTERNAL_SECRET: 'faults-internal-secret',
      RUST_LOG: 'warn',
      NO_COLOR: '1',
      // Placement by load alone: the faults must hit servers that hold
      // members of the same rooms (by default a room's members are placed
      // together).
      CHAT_PLACEMENT_ROOM_AFFINITY_CONNECTIONS: '0',
      CHAT_PLACEMENT_ROOM_AFFINITY_SLACK: '0',
    },
  });
  const proc: Proc = { name, child, log: '', port };
  child.stdout?.on('data', (d: Buffer) => (proc.log += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (proc.log += d.toString()));
  procs.push(proc);
  return proc;
}

beforeAll(async () => {
  for (const [what, path] of [
    ['api-server', API_BIN],
    ['chat-server', CHAT_BIN],
  ] as const) {
    if (!existsSync(path)) throw new Error(`${what} binary not found at ${path}: cargo build --bins, or set the env`);
  }
  if (process.env['CHAT_REDIS_URLS']) {
    redisUrls = process.env['CHAT_REDIS_URLS'];
  } else {
    redisDir = mkdtempSync(join(tmpdir(), 'sdk-faults-redis-'));
    redisEnv = {
      ...process.env,
      REDIS_CLUSTER_DIR: redisDir,
      REDIS_CLUSTER_BASE_PORT: process.env['REDIS_CLUSTER_BASE_PORT'] ?? '7400',
    };
    const out = execFileSync('bash', [REDIS_SCRIPT, 'start'], { env: redisEnv, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    const ready = out.trim().split('\n').at(-1) ?? '';
    redisUrls = ready.replace(/^redis cluster ready:\s*/, '');
    if (!redisUrls.startsWith('redis://')) throw new Error(`unexpected redis-cluster.sh output: ${out}`);
  }
}, 120_000);

afterAll(async () => {
  for (const p of procs) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill('SIGCONT');
      p.child.kill('SIGKILL');
    }
  }
  if (redisDir) {
    try {
      execFileSync('bash', [REDIS_SCRIPT, 'stop'], { env: redisEnv, stdio: 'ignore' });
    } finally {
      rmSync(redisDir, { recursive: true, force: true });
    }
  }
}, 60_000);

it('every acknowledged message reaches every member once, in order, through a SIGKILL and a SIGSTOP', async () => {
  // One API server, three chat servers.
  const apiPort = await freePort();
  start('api-server', API_BIN, ['--listen', `127.0.0.1:${apiPort}`, '--dev-tokens'], apiPort);
  const chats: Proc[] = [];
  for (const id of ['chat-a', 'chat-b', 'chat-c']) {
    const port = await freePort();
    chats.push(start(id, CHAT_BIN, ['--listen', `127.0.0.1:${port}`, '--server-id', id], port));
  }
  const api = `http://127.0.0.1:${apiPort}`;
  await waitFor('api /readyz', async () => (await fetch(`${api}/readyz`)).ok);
  const probe = new ChatClient({ apiUrl: api, getToken: async () => (await fetchDevToken(api, 'probe')).token, WebSocket });
  await waitFor('three ready chat servers', async () => (await probe.servers()).filter((s) => s.state === 'ready').length === 3);

  // SDK clients, tuned to notice a frozen server within a few seconds.
  const clients = USERS.map((user) => {
    const seen: Message[] = [];
    let reconnects = 0;
    const chat = new ChatClient({
      apiUrl: api,
      getToken: async () => (await fetchDevToken(api, user)).token,
      WebSocket,
      reconnect: { minDelayMs: 200, maxDelayMs: 2_000 },
      sendTimeoutMs: 3_000,
      welcomeTimeoutMs: 3_000,
      pingIntervalMs: 1_000,
      pongTimeoutMs: 2_000,
    });
    chat.on('message', (m) => seen.push(m));
    chat.on('state', (s) => s === 'reconnecting' && reconnects++);
    return { user, chat, seen, reconnects: () => reconnects };
  });
  const rooms: string[] = [];
  for (const members of ROOMS) {
    const owner = clients.find((c) => c.user === members[0])!;
    rooms.push((await owner.chat.rooms.create({ name: members.join('+'), members: members.slice(1) })).id);
  }
  for (const c of clients) {
    await c.chat.rooms.list();
    await c.chat.connect();
  }
  const placed = new Map<string, string[]>();
  for (const c of clients) placed.set(c.chat.session!.serverId, [...(placed.get(c.chat.session!.serverId) ?? []), c.user]);
  const byLoad = [...chats].sort((a, b) => (placed.get(b.name)?.length ?? 0) - (placed.get(a.name)?.length ?? 0));
  const [killed, frozen] = [byLoad[0]!, byLoad[1]!];

  // Sending, with the faults on a timeline.
  const sends: { user: string; room: string; promise: Promise<SendAck>; ack?: SendAck; error?: unknown }[] = [];
  const started = Date.now();
  const timeline = (async () => {
    await sleep(KILL_AT_MS);
    killed.child.kill('SIGKILL');
    await sleep(FREEZE_AT_MS - KILL_AT_MS);
    frozen.child.kill('SIGSTOP');
    await sleep(THAW_AT_MS - FREEZE_AT_MS);
    frozen.child.kill('SIGCONT');
  })();
  let n = 0;
  while (Date.now() - started < SEND_FOR_MS) {
    for (const c of clients) {
      const mine = rooms.filter((_, i) => ROOMS[i]!.includes(c.user));
      const room = mine[n % mine.length]!;
      const entry: (typeof sends)[number] = { user: c.user, room, promise: c.chat.send(room, `${c.user}#${n}`) };
      entry.promise.then(
        (ack) => (entry.ack = ack),
        (error) => (entry.error = error),
      );
      sends.push(entry);
    }
    n += 1;
    await sleep(SEND_INTERVAL_MS);
  }
  await timeline;
  await waitFor('every send settled', () => sends.every((s) => s.ack || s.error), 60_000);

  // Convergence: every member has every stored message of its rooms.
  const stored = new Map<string, Message[]>();
  for (const [i, room] of rooms.entries()) {
    const reader = clients.find((c) => c.user === ROOMS[i]![0])!.chat;
    const all: Message[] = [];
    for (;;) {
      const page = await reader.messages.after(room, all.at(-1)?.seq ?? 0, 200);
      all.push(...page);
      if (page.length < 200) break;
    }
    stored.set(room, all);
  }
  const complete = () =>
    rooms.every((room, i) =>
      clients
        .filter((c) => ROOMS[i]!.includes(c.user))
        .every((c) => c.seen.filter((m) => m.room === room).length >= stored.get(room)!.length),
    );
  await waitFor('every member has every message', complete, 60_000).catch(() => undefined);

  const acked = sends.filter((s) => s.ack);
  console.log(
    `[faults] killed ${killed.name} (${(placed.get(killed.name) ?? []).join(',')}), froze ${frozen.name} (${(placed.get(frozen.name) ?? []).join(',')}) for ${THAW_AT_MS - FREEZE_AT_MS} ms`,
  );
  console.log(`[faults] sends ${sends.length}, acknowledged ${acked.length}, refused ${sends.length - acked.length}`);
  for (const [i, room] of rooms.entries()) {
    const deliveries = clients
      .filter((c) => ROOMS[i]!.includes(c.user))
      .map((c) => `${c.user}=${c.seen.filter((m) => m.room === room).length}`);
    console.log(`[faults] room ${i}: stored ${stored.get(room)!.length}, delivered ${deliveries.join(' ')}`);
  }
  console.log(`[faults] reconnects ${clients.map((c) => `${c.user}=${c.reconnects()}`).join(' ')}`);

  expect(sends.filter((s) => s.error).map((s) => String(s.error))).toEqual([]);
  for (const [i, room] of rooms.entries()) {
    const all = stored.get(room)!;
    // Stored exactly once: one message per send, seqs 1..N.
    expect(all.map((m) => m.seq)).toEqual(all.map((_, k) => k + 1));
    expect(all.length).toBe(sends.filter((s) => s.room === room).length);
    expect(new Set(all.map((m) => `${m.from}/${m.client_msg_id}`)).size).toBe(all.length);
    const byId = new Map(all.map((m) => [m.id, m]));
    for (const s of sends.filter((x) => x.room === room)) {
      expect(byId.get(s.ack!.id)?.seq).toBe(s.ack!.seq);
    }
    // Delivered exactly once, in order, to every member.
    for (const c of clients.filter((x) => ROOMS[i]!.includes(x.user))) {
      expect(c.seen.filter((m) => m.room === room).map((m) => m.id), `${c.user} in room ${i}`).toEqual(all.map((m) => m.id));
    }
  }
  expect(clients.some((c) => c.reconnects() > 0)).toBe(true);
  for (const c of clients) c.chat.close();
  probe.close();
}, 240_000);
