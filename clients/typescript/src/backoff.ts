/**
 * Exponential backoff with full jitter: the n-th delay is uniform in
 * `[0, min(maxDelayMs, minDelayMs * 2^n)]`. Full jitter spreads a crowd of
 * clients that lost the same server, so they do not come back in one wave.
 * The random source is injected so tests are deterministic.
 */
export interface BackoffOptions {
  /** Upper bound of the first delay. */
  minDelayMs: number;
  /** Upper bound of every delay. */
  maxDelayMs: number;
}

export class Backoff {
  private failures = 0;

  constructor(
    private readonly options: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt; each call counts one failure. */
  next(): number {
    const ceiling = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** Math.min(this.failures, 30));
    this.failures += 1;
    return Math.floor(this.random() * ceiling);
  }

  /** Called after a success: the next delay is short again. */
  reset(): void {
    this.failures = 0;
  }

  get attempts(): number {
    return this.failures;
  }
}
