import { describe, expect, it } from 'vitest';
import { RoomCursors } from '../src/room-cursors.js';

const m = (seq: number, room = 'r') => ({ room, seq });
const seqs = (list: { seq: number }[]) => list.map((x) => x.seq);

describe('RoomCursors', () => {
  it('passes in-order messages and drops duplicates', () => {
    const c = new RoomCursors();
    c.track('r', 0, 0);
    expect(seqs(c.offer(m(1), 0))).toEqual([1]);
    expect(seqs(c.offer(m(2), 0))).toEqual([2]);
    expect(seqs(c.offer(m(2), 0))).toEqual([]);
    expect(seqs(c.offer(m(1), 0))).toEqual([]);
    expect(c.last('r')).toBe(2);
  });

  it('holds early messages until the gap closes', () => {
    const c = new RoomCursors();
    c.track('r', 0, 0);
    expect(seqs(c.offer(m(3), 0))).toEqual([]);
    expect(seqs(c.offer(m(3), 0))).toEqual([]);
    expect(c.gap('r')).toEqual({ room: 'r', after: 0, before: 3 });
    expect(seqs(c.offer(m(1), 0))).toEqual([1]);
    expect(seqs(c.offer(m(2), 0))).toEqual([2, 3]);
    expect(c.gap('r')).toBeUndefined();
  });

  it('reports a gap as due only after the delay, and restarts its clock when the cursor moves', () => {
    const c = new RoomCursors();
    c.track('r', 0, 0);
    c.offer(m(2), 100);
    c.offer(m(4), 150);
    expect(c.dueGaps(1099, 1000)).toEqual([]);
    expect(c.nextGapDue(1000)).toBe(1100);
    expect(c.dueGaps(1100, 1000)).toEqual([{ room: 'r', after: 0, before: 2 }]);
    c.offer(m(1), 1200); // 1 and 2 go out; the gap before 4 is new
    expect(c.nextGapDue(1000)).toBe(2200);
  });

  it('skips a gap history cannot fill', () => {
    const c = new RoomCursors();
    c.track('r', 5, 0);
    c.offer(m(9), 0);
    c.offer(m(11), 0);
    expect(seqs(c.skipGap({ room: 'r', after: 5, before: 9 }, 0))).toEqual([9]);
    expect(c.gap('r')).toEqual({ room: 'r', after: 9, before: 11 });
  });

  it('starts a room first seen through a message at that message', () => {
    const c = new RoomCursors();
    expect(seqs(c.offer(m(7, 'new'), 0))).toEqual([7]);
    expect(c.resumePoints()).toEqual({ new: 7 });
  });

  it('fills in an unknown start and releases what waits above it', () => {
    const c = new RoomCursors();
    c.track('r', undefined, 0);
    expect(c.resumePoints()).toEqual({});
    expect(seqs(c.track('r', 4, 0))).toEqual([]);
    expect(c.resumePoints()).toEqual({ r: 4 });
    expect(seqs(c.track('r', 9, 0))).toEqual([]); // a known cursor is kept
    expect(c.last('r')).toBe(4);
  });

  it('opens a gap for a seq known to exist that has not arrived', () => {
    const c = new RoomCursors();
    c.track('r', 2, 0);
    c.noteExists('r', 3, 10);
    expect(c.gap('r')).toEqual({ room: 'r', after: 2, before: 4 });
    expect(c.nextGapDue(100)).toBe(110);
    expect(seqs(c.offer(m(3), 20))).toEqual([3]);
    expect(c.gap('r')).toBeUndefined();
    expect(c.nextGapDue(100)).toBeUndefined();
    c.noteExists('r', 3, 30); // already seen: nothing
    expect(c.gap('r')).toBeUndefined();
  });
});
