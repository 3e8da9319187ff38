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
    fn drain_ready(&mut self, out: &mut Vec<Arc<str>>) {
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
        let cursor = self
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomCursor {
                last: seq.saturating_sub(1),
                ..RoomCursor::default()
            });
        if seq <= cursor.last {
            return; // duplicate
        }
        if seq == cursor.last + 1 {
            out.push(frame);
            cursor.last = seq;
            cursor.drain_ready(out);
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

    /// After a fill from the store: if the gap is still open, the missing
    /// messages are gone (trimmed by retention), so skip past them rather
    /// than hold the room back forever.
    pub fn skip_gap(&mut self, room: &str, out: &mut Vec<Arc<str>>) {
        if let Some(cursor) = self.rooms.get_mut(room) {
            if let Some(first) = cursor.pending.keys().next().copied() {
                if first > cursor.last + 1 {
                    cursor.last = first - 1;
                }
            }
            cursor.drain_ready(out);
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
        o.skip_gap("r", &mut out);
        assert_eq!(
            out.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vec!["4"]
        );
        assert_eq!(o.last("r"), Some(4));
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
