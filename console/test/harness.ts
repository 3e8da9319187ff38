/**
 * What the browser tests run against: real processes (`chat-local`, or an
 * `api-server` with two `chat-server`s on a Redis Cluster) on free loopback
 * ports, and Debian's Chromium driven by `playwright-core`. The page is
 * loaded from the API server itself (`http://127.0.0.1:<api>/`), which
 * serves the console embedded in its binary (`CONSOLE_DEV_SERVER=1`, a
 * development aid CI never sets, loads it from a Vite dev server instead).
 *
 * Environment:
 * - `CHAT_LOCAL_BIN`, `API_SERVER_BIN`, `CHAT_SERVER_BIN`: the binaries
 *   (default `../target/debug/...`).
 * - `CHROMIUM` (default `/usr/bin/chromium`).
 * - `CHAT_REDIS_URLS`: a Redis Cluster to use; otherwise one is started
 *   with `../scripts/redis-cluster.sh` on `REDIS_CLUSTER_BASE_PORT` (7500).
 * - `SCREENSHOT_DIR`: where screenshots go (default `test-results/screenshots`;
 *   `npm run screenshots` writes the committed ones in `../docs/screenshots`).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect } from 'vitest';

const repo = (path: string) => fileURLToPath(new URL(`../../${path}`, import.meta.url));
const CHAT_LOCAL_BIN = process.env['CHAT_LOCAL_BIN'] ?? repo('target/debug/chat-local');
const API_BIN = process.env['API_SERVER_BIN'] ?? repo('target/debug/api-server');
const CHAT_BIN = process.env['CHAT_SERVER_BIN'] ?? repo('target/debug/chat-server');
const REDIS_SCRIPT = repo('scripts/redis-cluster.sh');
const CHROMIUM = process.env['CHROMIUM'] ?? '/usr/bin/chromium';
export const SCREENSHOT_DIR = resolve(process.env['SCREENSHOT_DIR'] ?? fileURLToPath(new URL('../test-results/screenshots', import.meta.url)));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A loopback port free right now (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolvePort(address.port) : reject(new Error('no port'))));
    });
  });
}

// --- processes -----------------------------------------------------------------------

export interface Proc {
  name: string;
  child: ChildProcess;
  log: () => string;
  kill: (signal?: NodeJS.Signals) => void;
}

const running: Proc[] = [];

function spawnProc(name: string, bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  if (!existsSync(bin)) throw new Error(`${name}: binary not found at ${bin} (cargo build --bins, or set the env)`);
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1', ...env },
  });
  let log = '';
  const keep = (d: Buffer) => {
    log = (log + d.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const proc: Proc = {
    name,
    child,
    log: () => log,
    kill: (signal = 'SIGKILL') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
  running.push(proc);
  return proc;
}

/** Stops every process the tests started (by their own handles). */
export async function stopAll(): Promise<void> {
  for (const server of devServers.splice(0)) await server.close();
  const procs = running.splice(0);
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(
    procs.map((p) => (p.child.exitCode !== null || p.child.signalCode !== null ? undefined : new Promise((r) => p.child.once('exit', r)))),
  );
}

async function waitFor(what: string, check: () => Promise<boolean>, procs: Proc[], timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const p of procs) {
      if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}) while waiting for ${what}:\n${p.log().slice(-3000)}`);
    }
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function httpOk(url: string): Promise<boolean> {
  return (await fetch(url)).ok;
}

export async function devToken(api: string, user: string): Promise<string> {
  const res = await fetch(`${api}/v1/auth/token`, { method: 'POST', body: JSON.stringify({ user }), headers: { 'content-type': 'application/json' } });
  if (!res.ok) throw new Error(`dev token for ${user}: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

const tokens = new Map<string, Promise<string>>();

/** A REST call as `user` (setting up data the page then shows). */
export async function asUser<T>(api: string, user: string, method: string, path: string, body?: unknown): Promise<T> {
  const key = `${api} ${user}`;
  if (!tokens.has(key)) tokens.set(key, devToken(api, user));
  const res = await fetch(`${api}${path}`, {
    method,
    headers: { authorization: `Bearer ${await tokens.get(key)}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
  return (res.status === 204 ? undefined : await res.json()) as T;
}

/** How many of the chat servers `ids` (all, when omitted) the API lists as ready. */
async function readyServers(api: string, ids?: string[]): Promise<number> {
  const servers = await asUser<{ servers: { id: string; state: string }[] }>(api, 'probe', 'GET', '/v1/servers');
  return servers.servers.filter((s) => s.state === 'ready' && (!ids || ids.includes(s.id))).length;
}

const devServers: { close: () => Promise<void> }[] = [];
let devServerPort: number | undefined;

/**
 * With `CONSOLE_DEV_SERVER=1`, a development aid, the page comes from a
 * Vite dev server of `src/` (forwarding `/v1` to the API) instead: the
 * console can then be tried without rebuilding the Rust binaries. CI never
 * sets it.
 */
async function devServerOrigin(): Promise<string | undefined> {
  if (process.env['CONSOLE_DEV_SERVER'] !== '1') return undefined;
  devServerPort ??= await freePort();
  return `http://127.0.0.1:${devServerPort}`;
}

/** Where the page is loaded from: the API server (or the dev server, see above). */
async function pageOrigin(api: string): Promise<string> {
  const dev = await devServerOrigin();
  if (!dev) {
    await assertConsoleServed(api);
    return api;
  }
  const { createServer: createViteServer } = await import('vite');
  const server = await createViteServer({
    root: fileURLToPath(new URL('..', import.meta.url)),
    logLevel: 'warn',
    server: { host: '127.0.0.1', port: devServerPort!, strictPort: true, proxy: { '/v1': api }, hmr: false },
  });
  await server.listen();
  devServers.push(server);
  return dev;
}

/** The page must come from the API server: fail clearly when the binary does not serve it. */
async function assertConsoleServed(api: string): Promise<void> {
  const res = await fetch(`${api}/`);
  const text = await res.text();
  if (!res.ok || !text.includes('<div id="app">')) {
    throw new Error(
      `the API server at ${api}/ does not serve the console (HTTP ${res.status}: ${text.slice(0, 120)}); ` +
        'is the console embedded in this build of the binary?',
    );
  }
}

export interface LocalSystem {
  api: string;
  /** Where the page is loaded from: the API server itself. */
  page: string;
  process: Proc;
}

/** `chat-local` with two chat servers on free ports (and `args`, e.g. `--cors-origins`). */
export async function startChatLocal(args: string[] = []): Promise<LocalSystem> {
  for (let attempt = 1; ; attempt++) {
    const [apiPort, chat1, chat2] = [await freePort(), await freePort(), await freePort()];
    const p = spawnProc('chat-local', CHAT_LOCAL_BIN, ['--api-port', String(apiPort), '--chat-ports', `${chat1},${chat2}`, ...args]);
    const api = `http://127.0.0.1:${apiPort}`;
    try {
      await waitFor('chat-local /readyz', () => httpOk(`${api}/readyz`), [p]);
      await waitFor('two ready chat servers', async () => (await readyServers(api)) === 2, [p]);
      return { api, page: await pageOrigin(api), process: p };
    } catch (e) {
      p.kill();
      // A port taken meanwhile: try others.
      if (attempt >= 3 || !(e instanceof Error && e.message.includes('exited'))) throw e;
    }
  }
}

/**
 * For a test file: `chat-local` and Chromium started before its tests and
 * stopped after them. Read the fields inside tests (they are set by then).
 */
export function localSystemForFile(): { system: LocalSystem; browser: Browser } {
  const shared = {} as { system: LocalSystem; browser: Browser };
  beforeAll(async () => {
    shared.system = await startChatLocal();
    shared.browser = await launchBrowser();
  });
  afterAll(async () => {
    await shared.browser?.close();
    await stopAll();
  });
  return shared;
}

export interface ClusterSystem {
  api: string;
  page: string;
  chats: Map<string, Proc>;
  stopRedis: () => void;
}

const CLUSTER_SECRETS = {
  CHAT_JWT_SECRET: 'console-test-jwt-secret',
  CHAT_TICKET_SECRET: 'console-test-ticket-secret',
  CHAT_INTERNAL_SECRET: 'console-test-internal-secret',
};

/** A Redis Cluster (given or started), one api-server and chat servers `ids`. */
export async function startCluster(ids: string[]): Promise<ClusterSystem> {
  let redisUrls = process.env['CHAT_REDIS_URLS'] ?? '';
  let stopRedis = () => {};
  if (!redisUrls) {
    const dir = mkdtempSync(join(tmpdir(), 'console-redis-'));
    const env = { ...process.env, REDIS_CLUSTER_DIR: dir, REDIS_CLUSTER_BASE_PORT: process.env['REDIS_CLUSTER_BASE_PORT'] ?? '7500' };
    stopRedis = () => {
      try {
        execFileSync('bash', [REDIS_SCRIPT, 'stop'], { env, stdio: 'ignore' });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    let out = '';
    try {
      out = execFileSync('bash', [REDIS_SCRIPT, 'start'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    } catch (e) {
      stopRedis();
      throw e;
    }
    redisUrls = (out.trim().split('\n').at(-1) ?? '').replace(/^redis cluster ready:\s*/, '');
    if (!redisUrls.startsWith('redis://')) {
      stopRedis();
      throw new Error(`unexpected redis-cluster.sh output: ${out}`);
    }
  }
  const env = { CHAT_REDIS_URLS: redisUrls, ...CLUSTER_SECRETS };
  const apiPort = await freePort();
  const api = `http://127.0.0.1:${apiPort}`;
  // The page comes from the API server; its origin opens WebSockets on
  // the chat servers, so they must allow it (as a deployment configures).
  // The API server needs no entry for its own page.
  const apiProc = spawnProc('api-server', API_BIN, ['--listen', `127.0.0.1:${apiPort}`, '--dev-tokens'], env);
  const chats = new Map<string, Proc>();
  for (const id of ids) {
    const port = await freePort();
    const origins = [api, (await devServerOrigin()) ?? ''].filter(Boolean).join(',');
    const args = ['--listen', `127.0.0.1:${port}`, '--server-id', id, '--cors-origins', origins];
    chats.set(id, spawnProc(`chat-server ${id}`, CHAT_BIN, args, env));
  }
  const all = [apiProc, ...chats.values()];
  await waitFor('api-server /readyz', () => httpOk(`${api}/readyz`), all);
  await waitFor(`${ids.length} ready chat servers`, async () => (await readyServers(api, ids)) === ids.length, all);
  return { api, page: await pageOrigin(api), chats, stopRedis };
}

// --- browser -----------------------------------------------------------------------------

export function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--headless=new',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

export interface UserPage {
  user: string;
  context: BrowserContext;
  page: Page;
  /** Dialogs that opened (alert, confirm, prompt): none should. */
  dialogs: string[];
  /** Uncaught exceptions in the page. */
  errors: string[];
}

export const PHONE = { width: 390, height: 844 };
export const DESKTOP = { width: 1280, height: 800 };

/** A fresh browser context on the console, not signed in yet. */
export async function openConsole(browser: Browser, pageUrl: string, viewport = DESKTOP): Promise<Omit<UserPage, 'user'>> {
  const context = await browser.newContext({ viewport, colorScheme: 'light', locale: 'en-GB', timezoneId: 'UTC' });
  // Short waits: assertions poll (`until`), and a missing element should fail fast.
  context.setDefaultTimeout(5_000);
  const page = await context.newPage();
  const dialogs: string[] = [];
  const errors: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    void d.dismiss().catch(() => undefined);
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${pageUrl}/`);
  return { context, page, dialogs, errors };
}

/** A browser context signed in as `user` with a development token, connected. */
export async function signedIn(browser: Browser, pageUrl: string, user: string, viewport = DESKTOP): Promise<UserPage> {
  const opened = await openConsole(browser, pageUrl, viewport);
  const { page } = opened;
  await page.getByTestId('signin-user').fill(user);
  await page.getByTestId('signin-submit').click();
  await expect.poll(() => page.getByTestId('connection-state').getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
  await expect.poll(() => page.getByTestId('current-user').textContent()).toBe(user);
  return { user, ...opened };
}

export function roomItem(page: Page, name: string): Locator {
  return page.getByTestId('room-item').filter({ has: page.getByTestId('room-name').getByText(name, { exact: true }) });
}

/** Opens a room by name (at phone width, from the room list pane). */
export async function openRoom(page: Page, name: string): Promise<void> {
  const back = page.getByTestId('back-to-rooms');
  if (await back.isVisible()) await back.click();
  await roomItem(page, name).click();
  await expect.poll(() => page.getByTestId('room-title').textContent()).toBe(name);
}

export async function createRoom(page: Page, name: string, members: string): Promise<void> {
  await page.getByTestId('new-room-name').fill(name);
  await page.getByTestId('new-room-members').fill(members);
  await page.getByTestId('create-room').click();
  await expect.poll(() => page.getByTestId('room-title').textContent()).toBe(name);
}

/** Types `body` into the composer and presses Enter. */
export async function send(page: Page, body: string): Promise<void> {
  const input = page.getByTestId('composer-input');
  await input.fill(body);
  await input.press('Enter');
}

/**
 * `typist` types (a key every 150 ms, as a person would) until `watcher`'s
 * page shows them typing. Typing frames are throttled (one per room every
 * 2 s), so the first key may not send one. Leaves the draft in the composer.
 */
export async function typeUntilSeen(typist: UserPage, watcher: UserPage, draft = 'typing… '): Promise<void> {
  const input = typist.page.getByTestId('composer-input');
  const indicator = watcher.page.getByTestId('typing-indicator');
  const deadline = Date.now() + 10_000;
  for (let i = 0; ; i++) {
    await input.pressSequentially(draft[i % draft.length]!);
    if ((await indicator.textContent()) === `${typist.user} is typing…`) return;
    if (Date.now() > deadline) throw new Error(`${watcher.user} never saw ${typist.user} typing`);
    await sleep(150);
  }
}

/** The message elements whose body is exactly `body`. */
export function messagesWithBody(page: Page, body: string): Locator {
  return page.getByTestId('message').filter({ has: page.getByTestId('message-body').getByText(body, { exact: true }) });
}

/**
 * Starts recording, in the page, every status a message element shows
 * (`data-status`: pending, acked, failed, received), per body, in order.
 */
export async function recordStatuses(page: Page): Promise<void> {
  await page.evaluate(() => {
    const log: [string, string][] = [];
    (window as unknown as { __statuses: [string, string][] }).__statuses = log;
    const note = (el: Element) => {
      const body = el.querySelector('[data-testid=message-body]')?.textContent ?? '';
      const status = el.getAttribute('data-status') ?? '';
      const last = log.findLast(([b]) => b === body);
      if (last?.[1] !== status) log.push([body, status]);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        const nodes = r.type === 'attributes' ? [r.target] : [...r.addedNodes];
        for (const n of nodes) {
          if (!(n instanceof Element)) continue;
          if (n.matches('[data-testid=message]')) note(n);
          n.querySelectorAll('[data-testid=message]').forEach(note);
        }
      }
    }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
  });
}

/** The statuses the element(s) of `body` showed, in order (see `recordStatuses`). */
export async function statusesOf(page: Page, body: string): Promise<string[]> {
  return page.evaluate(
    (b) => (window as unknown as { __statuses: [string, string][] }).__statuses.filter(([x]) => x === b).map(([, s]) => s),
    body,
  );
}

/** Polls `read` until it returns `want` (default timeout 10 s). */
export async function until<T>(read: () => Promise<T>, want: T, timeout = 10_000): Promise<void> {
  await expect.poll(read, { timeout, interval: 100 }).toEqual(want);
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, `${name}.png`), animations: 'disabled', caret: 'hide' });
}
