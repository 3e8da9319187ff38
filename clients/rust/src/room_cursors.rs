//! Per-room ordering and deduplication: the part of the client that makes
//! the application see each message once, in seq order, across reconnects.
//!
//! Each tracked room keeps `last`, the highest seq handed to the application
//! (what a `resume` starts from), and holds back messages that arrive early.
//! A seq at or below `last` is a duplicate (a replay overlapping live
//! delivery, a retry) and is dropped. A gap that stays open is reported by
//! [`RoomCursors::due_gaps`] so the client can fill it from REST history; a
//! gap history cannot fill (trimmed by retention) is skipped with
//! [`RoomCursors::skip_gap`].
//!
//! Pure: no timers, no I/O; time (milliseconds on any monotonic clock) is
//! passed in.

use std::collections::{BTreeMap, HashMap};

use chat_protocol::Message;

/// Anything with a room and a seq (messages; tests use small structs).
pub trait Sequenced {
    fn room(&self) -> &str;
    fn seq(&self) -> u64;
}

impl Sequenced for Message {
    fn room(&self) -> &str {
        &self.room
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Missing messages of a room: seqs strictly between `after` and `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub room: String,
    pub after: u64,
    pub before: u64,
}

#[derive(Debug)]
struct Cursor<M> {
    /// Highest seq handed out; `None`: start at the first message seen.
    last: Option<u64>,
    /// Messages that arrived early, by seq.
    pending: BTreeMap<u64, M>,
    /// The highest seq known to exist (an ack or `resumed` said so).
    known: u64,
    /// When the current gap opened.
    gap_since: Option<u64>,
}

impl<M> Cursor<M> {
    fn new(last: Option<u64>) -> Self {
        Cursor {
            last,
            pending: BTreeMap::new(),
            known: 0,
            gap_since: None,
        }
    }

    fn is_open(&self) -> bool {
        !self.pending.is_empty() || self.last.is_some_and(|last| self.known > last)
    }
}

/// The cursors of every tracked room.
#[derive(Debug)]
pub struct RoomCursors<M> {
    rooms: HashMap<String, Cursor<M>>,
}

impl<M> Default for RoomCursors<M> {
    fn default() -> Self {
        RoomCursors {
            rooms: HashMap::new(),
        }
    }
}

impl<M: Sequenced> RoomCursors<M> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_tracked(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Starts tracking `room` after seq `last` (`None`: from the first
    /// message that arrives). A room already tracked keeps its cursor,
    /// except that an unknown start is filled in; returns what that made
    /// deliverable.
    pub fn track(&mut self, room: &str, last: Option<u64>, now: u64) -> Vec<M> {
        match self.rooms.get_mut(room) {
            None => {
                self.rooms.insert(room.to_owned(), Cursor::new(last));
                Vec::new()
            }
            Some(cursor) => {
                if cursor.last.is_none() && last.is_some() {
                    cursor.last = last;
                    drain(cursor, now)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Stops tracking `room` (no longer a member).
    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// The highest seq handed out for `room`, if known.
    pub fn last(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|c| c.last)
    }

    /// Offers one message; returns what is now deliverable, in order.
    pub fn offer(&mut self, message: M, now: u64) -> Vec<M> {
        let seq = message.seq();
        let cursor = self
            .rooms
            .entry(message.room().to_owned())
            .or_insert_with(|| Cursor::new(None));
        // A room first seen through a message starts at that message.
        let last = *cursor.last.get_or_insert(seq.saturating_sub(1));
        if seq <= last || cursor.pending.contains_key(&seq) {
            return Vec::new();
        }
        cursor.pending.insert(seq, message);
        drain(cursor, now)
    }

    /// Seq `seq` of `room` exists (an ack of our own send, or `resumed`,
    /// says so): if it does not arrive, that is a gap like any other, even
    /// with nothing after it.
    pub fn note_exists(&mut self, room: &str, seq: u64, now: u64) {
        let Some(cursor) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(last) = cursor.last else { return };
        if seq <= last || seq <= cursor.known {
            return;
        }
        cursor.known = seq;
        if cursor.gap_since.is_none() {
            cursor.gap_since = Some(now);
        }
    }

    /// Where to resume each room with a known cursor.
    pub fn resume_points(&self) -> BTreeMap<String, u64> {
        self.rooms
            .iter()
            .filter_map(|(room, c)| c.last.map(|last| (room.clone(), last)))
            .collect()
    }

    /// Gaps open for at least `delay_ms`.
    pub fn due_gaps(&self, now: u64, delay_ms: u64) -> Vec<Gap> {
        let mut gaps: Vec<Gap> = self
            .rooms
            .iter()
            .filter(|(_, c)| {
                c.gap_since
                    .is_some_and(|t| now.saturating_sub(t) >= delay_ms)
            })
            .filter_map(|(room, c)| gap_of(room, c))
            .collect();
        gaps.sort_by(|a, b| a.room.cmp(&b.room));
        gaps
    }

    /// When the oldest open gap becomes due, if any.
    pub fn next_gap_due(&self, delay_ms: u64) -> Option<u64> {
        self.rooms
            .values()
            .filter_map(|c| c.gap_since.map(|t| t + delay_ms))
            .min()
    }

    /// Each room with an open gap, and when that gap opened.
    pub fn gap_clocks(&self) -> impl Iterator<Item = (&str, u64)> {
        self.rooms
            .iter()
            .filter_map(|(room, c)| c.gap_since.map(|t| (room.as_str(), t)))
    }

    /// Restarts a gap's clock (a fill failed and will be tried again).
    pub fn postpone_gap(&mut self, room: &str, now: u64) {
        if let Some(cursor) = self.rooms.get_mut(room) {
            if cursor.is_open() {
                cursor.gap_since = Some(now);
            }
        }
    }

    /// The room's current gap, if any.
    pub fn gap(&self, room: &str) -> Option<Gap> {
        self.rooms.get(room).and_then(|c| gap_of(room, c))
    }

    /// Gives up on the messages of `gap` that did not arrive (trimmed from
    /// history): the cursor moves to just below the gap's end.
    pub fn skip_gap(&mut self, gap: &Gap, now: u64) -> Vec<M> {
        let Some(cursor) = self.rooms.get_mut(&gap.room) else {
            return Vec::new();
        };
        let Some(last) = cursor.last else {
            return Vec::new();
        };
        if last + 1 < gap.before {
            cursor.last = Some(gap.before - 1);
        }
        drain(cursor, now)
    }

    /// Messages held back, over all rooms.
    pub fn pending_len(&self) -> usize {
        self.rooms.values().map(|c| c.pending.len()).sum()
    }
}

fn gap_of<M>(room: &str, cursor: &Cursor<M>) -> Option<Gap> {
    let last = cursor.last?;
    if !cursor.is_open() {
        return None;
    }
    let mut before = cursor.pending.keys().next().copied().unwrap_or(u64::MAX);
    if cursor.known > last {
        before = before.min(cursor.known + 1);
    }
    Some(Gap {
        room: room.to_owned(),
        after: last,
        before,
    })
}

fn drain<M>(cursor: &mut Cursor<M>, now: u64) -> Vec<M> {
    let mut out = Vec::new();
    let Some(mut last) = cursor.last else {
        return out;
    };
    let before = last;
    // Anything at or below the cursor is a duplicate now.
    while let Some(entry) = cursor.pending.first_entry() {
        if *entry.key() <= last {
            entry.remove();
        } else {
            break;
        }
    }
    while let Some(m) = cursor.pending.remove(&(last + 1)) {
        last += 1;
        out.push(m);
    }
    cursor.last = Some(last);
    if !cursor.is_open() {
        cursor.gap_since = None;
    } else if last != before || cursor.gap_since.is_none() {
        cursor.gap_since = Some(now);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct M(&'static str, u64);
    impl Sequenced for M {
        fn room(&self) -> &str {
            self.0
        }
        fn seq(&self) -> u64 {
            self.1
        }
    }

    fn seqs(ms: &[M]) -> Vec<u64> {
        ms.iter().map(|m| m.1).collect()
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_are_dropped() {
        let mut c = RoomCursors::new();
        c.track("a", Some(0), 0);
        assert_eq!(seqs(&c.offer(M("a", 1), 0)), [1]);
        assert_eq!(seqs(&c.offer(M("a", 2), 0)), [2]);
        assert!(c.offer(M("a", 2), 0).is_empty());
        assert!(c.offer(M("a", 1), 0).is_empty());
        assert_eq!(c.last("a"), Some(2));
    }

    #[test]
    fn early_messages_wait_for_the_gap_to_close() {
        let mut c = RoomCursors::new();
        c.track("a", Some(0), 0);
        assert!(c.offer(M("a", 3), 10).is_empty());
        assert!(c.offer(M("a", 2), 11).is_empty());
        assert_eq!(
            c.gap("a"),
            Some(Gap {
                room: "a".into(),
                after: 0,
                before: 2
            })
        );
        assert_eq!(c.next_gap_due(100), Some(110));
        assert!(c.due_gaps(50, 100).is_empty());
        assert_eq!(c.due_gaps(110, 100).len(), 1);
        assert_eq!(seqs(&c.offer(M("a", 1), 12)), [1, 2, 3]);
        assert_eq!(c.gap("a"), None);
        assert_eq!(c.next_gap_due(100), None);
    }

    #[test]
    fn a_room_first_seen_through_a_message_starts_there() {
        let mut c = RoomCursors::new();
        assert_eq!(seqs(&c.offer(M("b", 7), 0)), [7]);
        assert_eq!(c.resume_points().get("b"), Some(&7));
    }

    #[test]
    fn an_unknown_start_is_filled_in_by_track() {
        let mut c = RoomCursors::<M>::new();
        c.track("a", None, 0);
        assert!(c.resume_points().is_empty());
        c.track("a", Some(4), 0);
        assert_eq!(c.resume_points().get("a"), Some(&4));
        // A known start is kept.
        c.track("a", Some(1), 0);
        assert_eq!(c.last("a"), Some(4));
    }

    #[test]
    fn a_known_but_missing_seq_is_a_gap_and_can_be_skipped() {
        let mut c = RoomCursors::new();
        c.track("a", Some(5), 0);
        c.note_exists("a", 7, 1);
        let gap = c.gap("a").unwrap();
        assert_eq!((gap.after, gap.before), (5, 8));
        assert_eq!(seqs(&c.offer(M("a", 6), 2)), [6]);
        assert!(c.gap("a").is_some(), "7 is still missing");
        let gap = c.gap("a").unwrap();
        assert!(c.skip_gap(&gap, 3).is_empty());
        assert_eq!(c.last("a"), Some(7));
        assert_eq!(c.gap("a"), None);
    }

    #[test]
    fn skipping_a_gap_releases_what_waited_behind_it() {
        let mut c = RoomCursors::new();
        c.track("a", Some(0), 0);
        c.offer(M("a", 4), 0);
        c.offer(M("a", 5), 0);
        let gap = c.gap("a").unwrap();
        assert_eq!((gap.after, gap.before), (0, 4));
        assert_eq!(seqs(&c.skip_gap(&gap, 1)), [4, 5]);
        assert_eq!(c.pending_len(), 0);
    }

    #[test]
    fn forgotten_rooms_are_not_resumed() {
        let mut c = RoomCursors::<M>::new();
        c.track("a", Some(1), 0);
        c.track("b", Some(2), 0);
        c.forget("a");
        assert_eq!(
            c.resume_points().into_iter().collect::<Vec<_>>(),
            [("b".to_string(), 2)]
        );
    }
}
