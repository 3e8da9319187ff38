/**
 * Signing in: a development token for a user name (local mode, `POST
 * /v1/auth/token`), or a pasted token (production). The choice is kept in
 * `sessionStorage`, so a reload stays signed in while each tab can be a
 * different user.
 */
import { ChatClient, fetchDevToken, limits } from '@scalechat/client';
import { ConsoleStore } from './store.js';

export type Credentials = { kind: 'dev'; user: string } | { kind: 'token'; token: string; user: string };

const STORAGE_KEY = 'chat-console.credentials';
const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;

/** The API is the page's own origin: the API server serves the console. */
export function apiUrl(): string {
  return window.location.origin;
}

/** Why `user` is not a user id, or undefined. The message quotes it as typed (shown as text). */
export function userIdProblem(user: string): string | undefined {
  if (USER_ID.test(user)) return undefined;
  if (user.length === 0) return 'Enter a user name.';
  return `"${user}" is not a valid user id: use 1-${limits.maxUserIdChars} characters of letters, digits, "_", "." and "-".`;
}

/** The `sub` of a JWT, read without verifying (the server verifies). */
export function userOfToken(token: string): string | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const payload: unknown = JSON.parse(atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4)));
    const sub = (payload as { sub?: unknown } | null)?.sub;
    return typeof sub === 'string' ? sub : undefined;
  } catch {
    return undefined;
  }
}

export function loadCredentials(): Credentials | undefined {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    if (!raw) return undefined;
    const c = JSON.parse(raw) as Partial<Credentials>;
    if (c.kind === 'dev' && typeof c.user === 'string') return { kind: 'dev', user: c.user };
    if (c.kind === 'token' && typeof c.token === 'string' && typeof c.user === 'string') {
      return { kind: 'token', token: c.token, user: c.user };
    }
  } catch {
    // Unreadable: sign in again.
  }
  return undefined;
}

export function saveCredentials(c: Credentials): void {
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(c));
  } catch {
    // Storage off: the session lasts until the page is closed.
  }
}

export function clearCredentials(): void {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Nothing kept.
  }
}

/** Builds the client and the store; resolves once the token was accepted (the room list loaded). */
export async function signIn(c: Credentials): Promise<ConsoleStore> {
  const api = apiUrl();
  const getToken = c.kind === 'dev' ? async () => (await fetchDevToken(api, c.user)).token : () => c.token;
  const chat = new ChatClient({ apiUrl: api, getToken, reconnect: { minDelayMs: 500, maxDelayMs: 10_000 } });
  const store = new ConsoleStore(c.user, chat);
  try {
    await store.start();
  } catch (e) {
    store.close();
    throw e;
  }
  return store;
}
