/**
 * Browser apps on other origins (issue 10, section 3): a tiny app page that
 * imports the SDK's build is served by its own server and loaded as
 * `http://localhost:<port>/`, another origin than `chat-local`'s API
 * (`http://127.0.0.1:<api>`). Out of the box, two users sign in, create a
 * room and chat both ways through it (CORS on the API, the Origin check on
 * the chat servers' WebSocket handshake). With `--cors-origins
 * https://app.example.com` instead, loopback pages are no longer allowed:
 * the browser blocks the SDK's REST calls and nothing is created.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { asUser, devToken, launchBrowser, startChatLocal, stopAll, until } from './harness.js';

const SDK = fileURLToPath(new URL('../../clients/typescript/', import.meta.url));

/** The SDK's `dist/` (ES modules, no runtime dependencies), built when missing or older than `src/`. */
function buildSdk(): void {
  const newest = (dir: string): number =>
    Math.max(...readdirSync(dir, { withFileTypes: true }).map((e) => (e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs)));
  const built = join(SDK, 'dist/index.js');
  if (existsSync(built) && statSync(built).mtimeMs >= newest(join(SDK, 'src'))) return;
  if (!existsSync(join(SDK, 'node_modules/.bin/tsc'))) throw new Error(`the SDK's dev dependencies are missing: npm ci in ${SDK}`);
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: SDK, stdio: 'inherit' });
}

/** The app: alice creates a room with bob, they chat both ways; what each receives goes to `window.__results`. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>SDK app on another origin</title>
<script type="module">
import { ChatClient, fetchDevToken } from '/sdk/index.js';
const q = new URLSearchParams(location.search);
const api = q.get('api');
const r = (window.__results = { step: 'sign in', alice: [], bob: [] });
const until = async (ok) => { while (!ok()) await new Promise((res) => setTimeout(res, 20)); };
try {
  // Tokens given in the query (the negative test) skip the sign-in.
  const token = async (user) => q.get(user) ?? (await fetchDevToken(api, user)).token;
  const [a, b] = [await token('alice'), await token('bob')];
  const alice = new ChatClient({ apiUrl: api, getToken: () => a });
  const bob = new ChatClient({ apiUrl: api, getToken: () => b });
  alice.on('message', (m) => r.alice.push(m.seq + ' ' + m.from + ': ' + m.body));
  bob.on('message', (m) => r.bob.push(m.seq + ' ' + m.from + ': ' + m.body));
  r.step = 'create room';
  const room = await alice.rooms.create({ name: 'second-origin', members: ['bob'] });
  r.room = room.id;
  r.step = 'connect';
  await Promise.all([alice.connect(), bob.connect()]);
  r.step = 'chat';
  await alice.send(room.id, 'hi bob');
  await until(() => r.bob.length > 0);
  await bob.send(room.id, 'hi alice');
  await until(() => r.alice.some((m) => m.endsWith('hi alice')));
  r.step = 'done';
} catch (e) {
  r.error = e.name + ' (' + e.code + '): ' + e.message;
} finally {
  r.finished = true;
}
</script>`;

interface Results {
  step: string;
  alice: string[];
  bob: string[];
  room?: string;
  error?: string;
  finished?: boolean;
}

let browser: Browser;
let app: Server;
let appOrigin: string;

beforeAll(async () => {
  buildSdk();
  app = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://app').pathname;
    const file = /^\/sdk\/((?:[\w-]+\/)*[\w-]+\.js)$/.exec(path)?.[1];
    if (path === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    else if (file && existsSync(join(SDK, 'dist', file))) res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(join(SDK, 'dist', file)));
    else res.writeHead(404).end();
  });
  await new Promise<void>((ok) => app.listen(0, '127.0.0.1', ok));
  appOrigin = `http://localhost:${(app.address() as { port: number }).port}`;
  browser = await launchBrowser();
});

afterAll(async () => {
  await browser?.close();
  await new Promise((ok) => (app ? app.close(ok) : ok(undefined)));
  await stopAll();
});

/** Loads the app against `api`, waits for it to finish and returns its results and the browser console. */
async function runApp(api: string, query: Record<string, string> = {}): Promise<{ results: Results; logs: string[] }> {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const logs: string[] = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    await page.goto(`${appOrigin}/?${new URLSearchParams({ api, ...query })}`);
    const results = () => page.evaluate(() => (window as unknown as { __results?: Results }).__results);
    await until(async () => (await results())?.finished === true, true, 15_000);
    return { results: (await results())!, logs };
  } finally {
    await context.close();
  }
}

it('an SDK page on http://localhost:<port> chats through chat-local by default', async () => {
  const { api } = await startChatLocal();
  expect(new URL(api).hostname).toBe('127.0.0.1');
  const { results, logs } = await runApp(api);
  expect(results.error, logs.join('\n')).toBeUndefined();
  expect(results.step).toBe('done');
  // Each side sees both messages once, in order (its own included).
  const both = ['1 alice: hi bob', '2 bob: hi alice'];
  expect(results.bob).toEqual(both);
  expect(results.alice).toEqual(both);
  // Stored once each.
  const { rooms } = await asUser<{ rooms: { id: string; last_seq: number }[] }>(api, 'alice', 'GET', '/v1/rooms');
  expect(rooms.map((r) => [r.id, r.last_seq])).toEqual([[results.room, 2]]);
});

it('with --cors-origins https://app.example.com the browser blocks the same page and nothing is created', async () => {
  const { api } = await startChatLocal(['--cors-origins', 'https://app.example.com']);
  // Signing in: fetch rejects (no CORS headers on the answer).
  const signIn = await runApp(api);
  expect(signIn.results.step).toBe('sign in');
  expect(signIn.results.error).toMatch(/^ApiError \(network\): POST \/v1\/auth\/token: /);
  expect(signIn.logs.join('\n')).toMatch(/blocked by CORS policy/);
  // With tokens got outside the browser, creating the room fails the same way, before reaching the server.
  const withTokens = await runApp(api, { alice: await devToken(api, 'alice'), bob: await devToken(api, 'bob') });
  expect(withTokens.results.step).toBe('create room');
  expect(withTokens.results.error).toMatch(/^ApiError \(network\): POST \/v1\/rooms: /);
  expect(withTokens.logs.join('\n')).toMatch(/blocked by CORS policy/);
  expect(withTokens.results.alice.concat(withTokens.results.bob)).toEqual([]);
  for (const user of ['alice', 'bob']) {
    expect((await asUser<{ rooms: unknown[] }>(api, user, 'GET', '/v1/rooms')).rooms).toEqual([]);
  }
});
