import { vi } from 'vitest';
import { ChatClient, type ChatClientOptions } from '../src/client.js';
import type { FrameProblem } from '../src/frames.js';
import type { Message } from '../src/wire.js';
import type { ChatError } from '../src/errors.js';
import type { FakeServer } from './fake-server.js';

/** A client of `server` signed in as `user`, recording what it sees. */
export function clientOf(server: FakeServer, user: string, options: Partial<ChatClientOptions> = {}) {
  const seen: Message[] = [];
  const states: string[] = [];
  const errors: ChatError[] = [];
  const problems: FrameProblem[] = [];
  const tokenCalls = { count: 0 };
  const client = new ChatClient({
    apiUrl: 'http://fake',
    getToken: () => {
      tokenCalls.count += 1;
      return `tok:${user}`;
    },
    webSocketFactory: server.openSocket,
    fetch: server.fetch,
    reconnect: { minDelayMs: 200, maxDelayMs: 3000 },
    sendTimeoutMs: 3000,
    gapFillDelayMs: 500,
    welcomeTimeoutMs: 2000,
    pingIntervalMs: 2000,
    pongTimeoutMs: 2000,
    maxRetryDelayMs: 2000,
    random: server.random,
    ...options,
  });
  client.on('message', (m) => seen.push(m));
  client.on('state', (s) => states.push(s));
  client.on('error', (e) => errors.push(e));
  client.on('protocolError', (p) => problems.push(p));
  return { client, seen, states, errors, problems, tokenCalls };
}

/** Advances fake time in steps until `done()` or `limitMs` passed. */
export async function runUntil(done: () => boolean, limitMs: number, stepMs = 50): Promise<void> {
  for (let t = 0; t < limitMs && !done(); t += stepMs) {
    await vi.advanceTimersByTimeAsync(stepMs);
  }
}

export function bySeq(list: Message[], room: string): number[] {
  return list.filter((m) => m.room === room).map((m) => m.seq);
}

/** Awaits `promise` while advancing fake time (fake REST answers need timers to run). */
export async function settle<T>(promise: Promise<T>, limitMs = 60_000): Promise<T> {
  let done = false;
  const watched = promise.finally(() => {
    done = true;
  });
  watched.catch(() => undefined);
  await runUntil(() => done, limitMs, 5);
  return watched;
}
