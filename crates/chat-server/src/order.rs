//! Per-connection ordering of room messages.
//!
//! Messages of one room can reach a chat server out of seq order: two
//! senders on different servers append seq 5 and 6, and their deliveries
//! travel on different links. The contract promises each connection sees a
//! room's messages in seq order without duplicates, so every session keeps,
//! per room, the last seq it wrote and holds back anything that arrives
//! early. Because a message is stored before it is routed, a gap that stays
//! open for `gap_fill_delay` is filled from the store's history.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct RoomCursor {
    last: u64,
    pending: BTreeMap<u64, Arc<str>>,
    gap_since: Option<Instant>,
}

impl RoomCursor {
    /// Writes out what has become consecutive. If the cursor moved and
    /// messages are still waiting, that is a new gap: its clock starts now,
    /// so it gets its own grace period before a fill.
    fn drain_ready(&mut self, now: Instant, out: &mut Vec<Arc<str>>) {
        let before = self.last;
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.last {
                entry.remove();
            } else if seq == self.last + 1 {
                out.push(entry.remove());
                self.last = seq;
            } else {
                break;
            }
        }
        if self.pending.is_empty() {
            self.gap_since = None;
        } else if self.last != before {
            self.gap_since = Some(now);
        }
    }
}

/// A gap to fill from history: messages with `after < seq < before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub room: String,
    pub after: u64,
    pub before: u64,
}

#[derive(Debug, Default)]
pub struct RoomOrder {
    rooms: HashMap<String, RoomCursor>,
}

impl RoomOrder {
    /// Everything up to `seq` counts as seen (the state at connect time).
    pub fn set_baseline(&mut self, room: &str, seq: u64) {
        self.rooms.entry(room.to_owned()).or_default().last = seq;
    }

    pub fn last(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|c| c.last)
    }

    /// Moves the cursor back (or forward) to `seq` for a resume; later
    /// messages will be replayed from the store through [`Self::offer`].
    pub fn rewind(&mut self, room: &str, seq: u64) {
        let cursor = self.rooms.entry(room.to_owned()).or_default();
        cursor.last = seq;
        cursor.pending.retain(|s, _| *s > seq);
    }

    /// Offers message `seq` of `room`; frames now writable, in order, are
    /// appended to `out`. A room never seen before (joined after connect)
    /// starts at this message.
    pub fn offer(
        &mut self,
        room: &str,
        seq: u64,
        frame: Arc<str>,
        now: Instant,
        out: &mut Vec<Arc<str>>,
    ) {
        // Looked up by &str first: the room is almost always known, and
        // `entry` would allocate its key on every delivery.
        if !self.rooms.contains_key(room) {
            self.rooms.insert(
                room.to_owned(),
                RoomCursor {
                    last: seq.saturating_sub(1),
                    ..RoomCursor::default()
                },
            );
        }
        let Some(cursor) = self.rooms.get_mut(room) else {
            return;
        };
        if seq <= cursor.last {
            return; // duplicate
        }
        if seq == cursor.last + 1 {
            out.push(frame);
            cursor.last = seq;
            cursor.drain_ready(now, out);
        } else {
            cursor.pending.insert(seq, frame);
            cursor.gap_since.get_or_insert(now);
        }
    }

    /// When the oldest open gap becomes due for a fill.
    pub fn next_fill_at(&self, delay: Duration) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(|c| c.gap_since)
            .min()
            .map(|since| since + delay)
    }

    /// Gaps open for at least `delay`.
    pub fn due_gaps(&self, now: Instant, delay: Duration) -> Vec<Gap> {
        self.rooms
            .iter()
            .filter(|(_, c)| c.gap_since.is_some_and(|s| now >= s + delay))
            .filter_map(|(room, c)| {
                let before = *c.pending.keys().next()?;
                Some(Gap {
                    room: room.clone(),
                    after: c.last,
                    before,
                })
            })
            .collect()
    }

    /// After a fill from the store covered `gap`: messages of that gap the
    /// store no longer has (trimmed by retention) are skipped rather than
    /// holding the room back forever. Only that gap: a later gap is left to
    /// its own fill, since its messages may well be in history.
    pub fn skip_gap(&mut self, gap: &Gap, now: Instant, out: &mut Vec<Arc<str>>) {
        if let Some(cursor) = self.rooms.get_mut(&gap.room) {
            if cursor.last < gap.before.saturating_sub(1) {
                cursor.last = gap.before - 1;
            }
            cursor.drain_ready(now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn offer(order: &mut RoomOrder, seq: u64) -> Vec<String> {
        let mut out = Vec::new();
        order.offer("r", seq, f(&seq.to_string()), Instant::now(), &mut out);
        out.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_drop() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 0);
        assert_eq!(offer(&mut o, 1), vec!["1"]);
        assert_eq!(offer(&mut o, 2), vec!["2"]);
        assert!(offer(&mut o, 2).is_empty());
        assert!(offer(&mut o, 1).is_empty());
    }

    #[test]
    fn early_messages_wait_for_the_gap_to_close() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 4);
        assert!(offer(&mut o, 7).is_empty());
        assert!(offer(&mut o, 6).is_empty());
        assert_eq!(o.next_fill_at(Duration::ZERO).is_some(), true);
        assert_eq!(offer(&mut o, 5), vec!["5", "6", "7"]);
        assert_eq!(o.next_fill_at(Duration::ZERO), None);
    }

    #[test]
    fn a_room_first_seen_after_connect_starts_at_its_first_message() {
        let mut o = RoomOrder::default();
        assert_eq!(offer(&mut o, 42), vec!["42"]);
        assert_eq!(o.last("r"), Some(42));
    }

    #[test]
    fn due_gaps_name_the_missing_range_and_fills_close_them() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 2);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 5, f("5"), t0, &mut out);
        assert!(o.due_gaps(t0, Duration::from_millis(100)).is_empty());
        let gaps = o.due_gaps(t0 + Duration::from_millis(100), Duration::from_millis(100));
        assert_eq!(
            gaps,
            vec![Gap {
                room: "r".into(),
                after: 2,
                before: 5
            }]
        );
        // The fill offers 3 and 4 from the store; 5 follows from pending.
        o.offer("r", 3, f("3"), t0, &mut out);
        o.offer("r", 4, f("4"), t0, &mut out);
        assert_eq!(
            out.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vec!["3", "4", "5"]
        );
    }

    #[test]
    fn an_unfillable_gap_is_skipped() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 1);
        assert!(offer(&mut o, 4).is_empty());
        let mut out = Vec::new();
        let gap = Gap {
            room: "r".into(),
            after: 1,
            before: 4,
        };
        o.skip_gap(&gap, Instant::now(), &mut out);
        assert_eq!(
            out.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vec!["4"]
        );
        assert_eq!(o.last("r"), Some(4));
    }

    /// The bug chat-bench found: with 12 and 14 waiting after 10, a fill of
    /// the first gap must not skip 13, which is in history and may still
    /// arrive live.
    #[test]
    fn a_fill_skips_only_its_own_gap() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 10);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 12, f("12"), t0, &mut out);
        o.offer("r", 14, f("14"), t0, &mut out);
        let delay = Duration::from_millis(100);
        let gaps = o.due_gaps(t0 + delay, delay);
        let first = Gap {
            room: "r".into(),
            after: 10,
            before: 12,
        };
        assert_eq!(gaps, vec![first.clone()]);
        // The fill brings 11; 12 follows; 14 waits for 13.
        let t1 = t0 + delay;
        o.offer("r", 11, f("11"), t1, &mut out);
        o.skip_gap(&first, t1, &mut out);
        let written = |out: &Vec<Arc<str>>| out.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(written(&out), vec!["11", "12"]);
        assert_eq!(o.last("r"), Some(12));
        // The new gap (13) gets its own grace period, counted from t1.
        assert!(o.due_gaps(t1, delay).is_empty());
        assert_eq!(o.next_fill_at(delay), Some(t1 + delay));
        o.offer("r", 13, f("13"), t1, &mut out);
        assert_eq!(written(&out), vec!["11", "12", "13", "14"]);
    }

    #[test]
    fn rewind_replays_from_the_given_seq() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 9);
        o.rewind("r", 3);
        assert_eq!(offer(&mut o, 4), vec!["4"]);
        assert!(offer(&mut o, 4).is_empty());
    }
}
