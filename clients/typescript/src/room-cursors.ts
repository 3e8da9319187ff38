/**
 * Per-room ordering and deduplication: the part of the client that makes the
 * app see each message once, in seq order, across reconnects.
 *
 * Each tracked room keeps `last`, the highest seq handed to the app (what a
 * `resume` starts from), and holds back messages that arrive early. A seq at
 * or below `last` is a duplicate (a replay overlapping live delivery, a
 * retry) and is dropped. A gap that stays open is reported by `dueGaps` so
 * the client can fill it from REST history; a gap history cannot fill (the
 * messages were trimmed by retention) is skipped with `skipGap`.
 *
 * Pure: no timers, no I/O; time is passed in.
 */

export interface Sequenced {
  room: string;
  seq: number;
}

/** Missing messages of a room: seqs strictly between `after` and `before`. */
export interface Gap {
  room: string;
  after: number;
  before: number;
}

interface Cursor<M> {
  /** Highest seq handed out; undefined: start at the first message seen. */
  last: number | undefined;
  pending: Map<number, M>;
  /** The highest seq known to exist (an ack told us) though not yet seen. */
  known: number;
  /** When the current gap opened. */
  gapSince: number | undefined;
}

export class RoomCursors<M extends Sequenced> {
  private readonly rooms = new Map<string, Cursor<M>>();

  isTracked(room: string): boolean {
    return this.rooms.has(room);
  }

  /**
   * Starts tracking `room` after seq `last` (undefined: from the first
   * message that arrives). A room already tracked keeps its cursor, except
   * that an unknown start is filled in.
   */
  track(room: string, last: number | undefined, now: number): M[] {
    const cursor = this.rooms.get(room);
    if (!cursor) {
      this.rooms.set(room, { last, pending: new Map(), known: 0, gapSince: undefined });
      return [];
    }
    if (cursor.last === undefined && last !== undefined) {
      cursor.last = last;
      return this.drain(cursor, now);
    }
    return [];
  }

  forget(room: string): void {
    this.rooms.delete(room);
  }

  /** The highest seq handed out for `room`, if known. */
  last(room: string): number | undefined {
    return this.rooms.get(room)?.last;
  }

  /** Offers one message; returns what is now deliverable, in order. */
  offer(message: M, now: number): M[] {
    let cursor = this.rooms.get(message.room);
    if (!cursor) {
      cursor = { last: undefined, pending: new Map(), known: 0, gapSince: undefined };
      this.rooms.set(message.room, cursor);
    }
    if (cursor.last === undefined) {
      // A room first seen through a message starts at that message.
      cursor.last = message.seq - 1;
    }
    if (message.seq <= cursor.last || cursor.pending.has(message.seq)) return [];
    cursor.pending.set(message.seq, message);
    return this.drain(cursor, now);
  }

  /**
   * Seq `seq` of `room` exists (the ack of our own send says so): if it does
   * not arrive, that is a gap like any other, even with nothing after it.
   */
  noteExists(room: string, seq: number, now: number): void {
    const cursor = this.rooms.get(room);
    if (!cursor || cursor.last === undefined || seq <= cursor.last || seq <= cursor.known) return;
    cursor.known = seq;
    if (cursor.gapSince === undefined) cursor.gapSince = now;
  }

  /** Where to resume each room with a known cursor. */
  resumePoints(): Record<string, number> {
    const points: Record<string, number> = {};
    for (const [room, cursor] of this.rooms) {
      if (cursor.last !== undefined) points[room] = cursor.last;
    }
    return points;
  }

  /** Gaps open for at least `delayMs`. */
  dueGaps(now: number, delayMs: number): Gap[] {
    const gaps: Gap[] = [];
    for (const [room, cursor] of this.rooms) {
      if (cursor.gapSince !== undefined && now - cursor.gapSince >= delayMs) {
        const gap = this.gapOf(room, cursor);
        if (gap) gaps.push(gap);
      }
    }
    return gaps;
  }

  /** When the oldest open gap becomes due, if any. */
  nextGapDue(delayMs: number): number | undefined {
    let next: number | undefined;
    for (const cursor of this.rooms.values()) {
      if (cursor.gapSince !== undefined) {
        const due = cursor.gapSince + delayMs;
        if (next === undefined || due < next) next = due;
      }
    }
    return next;
  }

  /** Restarts a gap's clock (a fill failed and will be tried again). */
  postponeGap(room: string, now: number): void {
    const cursor = this.rooms.get(room);
    if (cursor && this.isOpen(cursor)) cursor.gapSince = now;
  }

  /** The room's current gap, if any. */
  gap(room: string): Gap | undefined {
    const cursor = this.rooms.get(room);
    return cursor ? this.gapOf(room, cursor) : undefined;
  }

  /**
   * Gives up on the messages of `gap` that did not arrive (trimmed from
   * history): the cursor moves to just below the next held-back message.
   */
  skipGap(gap: Gap, now: number): M[] {
    const cursor = this.rooms.get(gap.room);
    if (!cursor || cursor.last === undefined) return [];
    if (cursor.last < gap.before - 1) cursor.last = gap.before - 1;
    return this.drain(cursor, now);
  }

  private gapOf(room: string, cursor: Cursor<M>): Gap | undefined {
    if (cursor.last === undefined || !this.isOpen(cursor)) return undefined;
    const ends = [...cursor.pending.keys()];
    if (cursor.known > cursor.last) ends.push(cursor.known + 1);
    return { room, after: cursor.last, before: Math.min(...ends) };
  }

  private isOpen(cursor: Cursor<M>): boolean {
    return cursor.pending.size > 0 || (cursor.last !== undefined && cursor.known > cursor.last);
  }

  private drain(cursor: Cursor<M>, now: number): M[] {
    const out: M[] = [];
    if (cursor.last === undefined) return out;
    const before = cursor.last;
    for (const seq of cursor.pending.keys()) {
      if (seq <= cursor.last) cursor.pending.delete(seq);
    }
    for (;;) {
      const next = cursor.pending.get(cursor.last + 1);
      if (next === undefined) break;
      cursor.pending.delete(cursor.last + 1);
      cursor.last += 1;
      out.push(next);
    }
    if (!this.isOpen(cursor)) cursor.gapSince = undefined;
    else if (cursor.last !== before || cursor.gapSince === undefined) cursor.gapSince = now;
    return out;
  }
}
