/**
 * Sends not yet acknowledged. Each keeps the `client_msg_id` it was given
 * when the app called `send`, and every retry (after a reconnect, an
 * `unavailable`, a timeout, a `rate_limited`) repeats that id, so the server
 * stores the message once however many times it reaches it.
 *
 * Pure: no timers and no sockets. The client asks which sends are due
 * (`due`), reports what happened to them, and arms one timer at
 * `nextDeadline`.
 */

export interface OutboxEntry<R> {
  readonly clientMsgId: string;
  readonly room: string;
  readonly body: string;
  /** `queued`: to be written; `inflight`: written, waiting for the ack. */
  state: 'queued' | 'inflight';
  /** When it was last written (inflight) or may be written again (queued). */
  at: number;
  attempts: number;
  readonly settle: R;
}

export class Outbox<R> {
  private readonly entries = new Map<string, OutboxEntry<R>>();
  /** After a `rate_limited`, nothing is written before this time. */
  private pausedUntil = 0;

  add(clientMsgId: string, room: string, body: string, settle: R, now: number): void {
    this.entries.set(clientMsgId, { clientMsgId, room, body, state: 'queued', at: now, attempts: 0, settle });
  }

  get size(): number {
    return this.entries.size;
  }

  get(clientMsgId: string): OutboxEntry<R> | undefined {
    return this.entries.get(clientMsgId);
  }

  /** Queued sends that may be written now, oldest first; they become inflight. */
  due(now: number): OutboxEntry<R>[] {
    if (now < this.pausedUntil) return [];
    const out: OutboxEntry<R>[] = [];
    for (const entry of this.entries.values()) {
      if (entry.state === 'queued' && entry.at <= now) {
        entry.state = 'inflight';
        entry.at = now;
        entry.attempts += 1;
        out.push(entry);
      }
    }
    return out;
  }

  /** Removes and returns the entry an ack or a final error settles. */
  settle(clientMsgId: string): OutboxEntry<R> | undefined {
    const entry = this.entries.get(clientMsgId);
    if (entry) this.entries.delete(clientMsgId);
    return entry;
  }

  /** Not stored this time (`unavailable`): write again at `retryAt`. */
  retryAt(clientMsgId: string, retryAt: number): void {
    const entry = this.entries.get(clientMsgId);
    if (entry) {
      entry.state = 'queued';
      entry.at = retryAt;
    }
  }

  /** `rate_limited`: this send is queued again and nothing is written until `until`. */
  pause(clientMsgId: string, until: number): void {
    this.retryAt(clientMsgId, until);
    this.pausedUntil = Math.max(this.pausedUntil, until);
  }

  /** The connection is gone: everything inflight is written again on the next one. */
  requeueInflight(now: number): void {
    for (const entry of this.entries.values()) {
      if (entry.state === 'inflight') {
        entry.state = 'queued';
        entry.at = now;
      }
    }
  }

  /** Whether an inflight send has waited longer than `timeoutMs` for its ack. */
  hasTimedOut(now: number, timeoutMs: number): boolean {
    for (const entry of this.entries.values()) {
      if (entry.state === 'inflight' && now - entry.at >= timeoutMs) return true;
    }
    return false;
  }

  /** The next time something is due: a retry, the end of a pause, or a timeout. */
  nextDeadline(timeoutMs: number): number | undefined {
    let next: number | undefined;
    const consider = (t: number) => {
      if (next === undefined || t < next) next = t;
    };
    for (const entry of this.entries.values()) {
      if (entry.state === 'inflight') consider(entry.at + timeoutMs);
      else consider(Math.max(entry.at, this.pausedUntil));
    }
    return next;
  }

  /** Removes and returns everything (the client is closing). */
  takeAll(): OutboxEntry<R>[] {
    const all = [...this.entries.values()];
    this.entries.clear();
    return all;
  }
}
