/**
 * The app's token callback, cached. A token is asked for again when it is
 * about to expire (the JWT's `exp`, read without verifying: the server
 * verifies) or when the server refused it with 401 (`invalidate`).
 * Concurrent callers share one pending call.
 */

export type GetToken = () => Promise<string> | string;

/** Refresh this long before `exp`. */
const EXPIRY_MARGIN_MS = 10_000;

export function jwtExpiryMs(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const payload: unknown = JSON.parse(atob(padded));
    if (typeof payload === 'object' && payload !== null) {
      const exp = (payload as { exp?: unknown }).exp;
      if (typeof exp === 'number' && Number.isFinite(exp)) return exp * 1000;
    }
  } catch {
    // Not a JWT we can read: rely on 401s alone.
  }
  return undefined;
}

export class TokenSource {
  private token: string | undefined;
  private expiresAt: number | undefined;
  private pending: Promise<string> | undefined;

  constructor(private readonly getToken: GetToken) {}

  async get(): Promise<string> {
    if (this.token !== undefined && (this.expiresAt === undefined || Date.now() < this.expiresAt - EXPIRY_MARGIN_MS)) {
      return this.token;
    }
    if (!this.pending) {
      this.pending = (async () => {
        try {
          const token = await this.getToken();
          if (typeof token !== 'string' || token.length === 0) {
            throw new TypeError('getToken must return a non-empty string');
          }
          this.token = token;
          this.expiresAt = jwtExpiryMs(token);
          return token;
        } finally {
          this.pending = undefined;
        }
      })();
    }
    return this.pending;
  }

  /** The server refused `token`: the next `get` asks the app again. */
  invalidate(token: string): void {
    if (this.token === token) {
      this.token = undefined;
      this.expiresAt = undefined;
    }
  }
}
