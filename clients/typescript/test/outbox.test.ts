import { describe, expect, it } from 'vitest';
import { Backoff } from '../src/backoff.js';
import { Outbox } from '../src/outbox.js';

describe('Outbox', () => {
  it('hands out each queued send once, oldest first, until requeued', () => {
    const o = new Outbox<null>();
    o.add('a', 'r', 'x', null, 0);
    o.add('b', 'r', 'y', null, 0);
    expect(o.due(0).map((e) => e.clientMsgId)).toEqual(['a', 'b']);
    expect(o.due(1)).toEqual([]);
    o.requeueInflight(2);
    const again = o.due(2);
    expect(again.map((e) => [e.clientMsgId, e.attempts])).toEqual([
      ['a', 2],
      ['b', 2],
    ]);
  });

  it('settles once and ignores a second ack', () => {
    const o = new Outbox<string>();
    o.add('a', 'r', 'x', 'handle', 0);
    expect(o.settle('a')?.settle).toBe('handle');
    expect(o.settle('a')).toBeUndefined();
    expect(o.size).toBe(0);
  });

  it('retries an unavailable send later and pauses everything after rate_limited', () => {
    const o = new Outbox<null>();
    o.add('a', 'r', 'x', null, 0);
    o.add('b', 'r', 'y', null, 0);
    o.due(0);
    o.retryAt('a', 100);
    expect(o.nextDeadline(10_000)).toBe(100);
    expect(o.due(50)).toEqual([]);
    expect(o.due(100).map((e) => e.clientMsgId)).toEqual(['a']);
    o.pause('a', 500);
    o.requeueInflight(200);
    expect(o.due(300)).toEqual([]);
    expect(o.nextDeadline(10_000)).toBe(500);
    expect(o.due(500).map((e) => e.clientMsgId)).toEqual(['a', 'b']);
  });

  it('notices a send that waited too long for its ack', () => {
    const o = new Outbox<null>();
    o.add('a', 'r', 'x', null, 0);
    o.due(0);
    expect(o.hasTimedOut(999, 1000)).toBe(false);
    expect(o.hasTimedOut(1000, 1000)).toBe(true);
    expect(o.nextDeadline(1000)).toBe(1000);
  });
});

describe('Backoff', () => {
  it('draws full-jitter delays under an exponentially growing ceiling, capped, and resets', () => {
    const top = new Backoff({ minDelayMs: 100, maxDelayMs: 1000 }, () => 0.999999);
    expect([1, 2, 3, 4, 5].map(() => top.next())).toEqual([99, 199, 399, 799, 999]);
    top.reset();
    expect(top.next()).toBe(99);
    const bottom = new Backoff({ minDelayMs: 100, maxDelayMs: 1000 }, () => 0);
    expect(bottom.next()).toBe(0);
  });
});
