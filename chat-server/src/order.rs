//! Per-connection ordering of room messages.
//!
//! Messages of one room can reach a chat server out of seq order: two
//! senders on different servers append seq 5 and 6, and their deliveries
//! travel on different links. The contract promises each connection sees a
//! room's messages in seq order without duplicates, so every session keeps,
//! per room, the last seq it wrote and holds back anything that arrives
//! early. Because a message is stored before it is routed, a gap that stays
//! open for `gap_fill_delay` is filled from the store's history.
//!
//! A gap is noticed in two ways: a later message arrives first (`pending`),
//! or the store says the room holds more than this session has written
//! (`known_latest`, from the server's periodic catch-up,
//! [`crate::ChatServer`]). The second covers a quiet room whose last
//! deliveries were lost (a server counted dead, a link down, a sender that
//! died between storing and routing): no later message would ever reveal
//! that gap.

use std::collections::{btree_map, BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where one session stands in one room. Most rooms of most sessions are
/// in order: they cost the last seq written and an empty pointer. What a
/// gap or a hold needs lives boxed beside, only while there is one (a
/// cursor is 16 bytes instead of 96; with the shared room names, 3.3 KB
/// less RSS per idle session in 20 rooms: docs/benchmarks.md, "Idle
/// sessions in rooms").
#[derive(Debug, Default)]
struct RoomCursor {
    last: u64,
    unsettled: Option<Box<Unsettled>>,
}

/// A room's state while something is missing, waiting or held.
#[derive(Debug, Default)]
struct Unsettled {
    pending: BTreeMap<u64, Arc<str>>,
    /// The highest seq the store is known to hold (0: none known beyond
    /// what arrived).
    known_latest: u64,
    gap_since: Option<Instant>,
    /// Fills that failed in a row, and when the next may start (backoff).
    fill_failures: u32,
    fill_not_before: Option<Instant>,
    /// A room first seen through a delivery (a room created, a member
    /// added, after connect) holds what arrives until then: an earlier seq
    /// may still come over another link, and must not then count as a
    /// duplicate of a start that was too late.
    hold_until: Option<Instant>,
}

impl Unsettled {
    fn has_gap(&self, last: u64) -> bool {
        !self.pending.is_empty() || self.known_latest > last
    }
}

impl RoomCursor {
    fn unsettled(&mut self) -> &mut Unsettled {
        self.unsettled.get_or_insert_default()
    }

    fn hold_until(&self) -> Option<Instant> {
        self.unsettled.as_ref().and_then(|u| u.hold_until)
    }

    /// Drops the gap state once nothing is missing or held: what it kept
    /// (failures, backoff, a gap's clock) belongs to a gap that is over.
    fn settle(&mut self) {
        if let Some(u) = &self.unsettled {
            if !u.has_gap(self.last) && u.hold_until.is_none() {
                self.unsettled = None;
            }
        }
    }

    /// Writes out what has become consecutive. If the cursor moved and
    /// messages are still waiting, that is a new gap: its clock starts now,
    /// so it gets its own grace period before a fill.
    fn drain_ready(&mut self, now: Instant, out: &mut Vec<Arc<str>>) {
        let Some(u) = self.unsettled.as_mut() else {
            return;
        };
        let before = self.last;
        while let Some(entry) = u.pending.first_entry() {
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
        if u.has_gap(self.last) {
            if self.last != before {
                u.gap_since = Some(now);
            }
        } else if u.hold_until.is_some() {
            // Not reached today (a held room is released before it
            // drains), but a hold must outlive the gap: only its state goes.
            u.gap_since = None;
            u.fill_failures = 0;
            u.fill_not_before = None;
        } else {
            // The gap is over, and its clock, failures and backoff with it.
            self.unsettled = None;
        }
    }

    fn note_latest(&mut self, latest: u64, now: Instant) {
        if latest > self.last {
            let u = self.unsettled();
            if latest > u.known_latest {
                u.known_latest = latest;
                u.gap_since.get_or_insert(now);
            }
        }
    }

    /// When this cursor's gap is due for a fill (or its hold ends).
    fn fill_at(&self, delay: Duration) -> Option<Instant> {
        let u = self.unsettled.as_ref()?;
        if let Some(hold) = u.hold_until {
            return Some(hold);
        }
        let due = u.gap_since? + delay;
        Some(u.fill_not_before.map_or(due, |t| t.max(due)))
    }
}

/// Longest wait between two attempts of a failing fill.
const MAX_FILL_BACKOFF: Duration = Duration::from_secs(5);

/// A gap to fill from history: messages with `after < seq < before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub room: String,
    pub after: u64,
    pub before: u64,
    /// Known only from the store's latest seq, with nothing delivered after
    /// it: the session may have left the room meanwhile, so membership is
    /// checked before filling.
    pub tail: bool,
}

/// The latest seq of rooms, as the server's catch-up read them: what it
/// hands every session when a room moved. Keyed by the tracked rooms' own
/// shared names, so making it copies no name.
pub type LatestSeqs = HashMap<Arc<str>, u64>;

/// The rooms a server's sessions track, with how many sessions track each:
/// what the server's catch-up asks the store about. Each name is kept once
/// here and shared by every session's cursor, instead of a copy per session
/// and room.
#[derive(Debug, Default)]
pub struct TrackedRooms {
    inner: Mutex<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    rooms: HashMap<Arc<str>, usize>,
    /// Counts the rooms that started or stopped being tracked, so that the
    /// catch-up, which reads every room every second, lists them again
    /// only when they changed.
    changes: u64,
}

impl TrackedRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more session tracks `room`; its shared name.
    fn track(&self, room: &str) -> Arc<str> {
        let mut tracked = self.lock();
        if let Some((name, _)) = tracked.rooms.get_key_value(room) {
            let name = name.clone();
            *tracked.rooms.get_mut(room).expect("found above") += 1;
            return name;
        }
        let name: Arc<str> = Arc::from(room);
        tracked.rooms.insert(name.clone(), 1);
        tracked.changes += 1;
        name
    }

    fn untrack<'a>(&self, names: impl IntoIterator<Item = &'a Arc<str>>) {
        let mut tracked = self.lock();
        for name in names {
            if let Some(n) = tracked.rooms.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    tracked.rooms.remove(name);
                    tracked.changes += 1;
                }
            }
        }
    }

    /// Every room some session tracks, with the count of changes it is as
    /// of; `None` if that count is still `seen`.
    pub fn names_since(&self, seen: Option<u64>) -> Option<(u64, Vec<Arc<str>>)> {
        let tracked = self.lock();
        if seen == Some(tracked.changes) {
            return None;
        }
        Some((tracked.changes, tracked.rooms.keys().cloned().collect()))
    }

    /// Every room some session tracks.
    #[cfg(test)]
    fn names(&self) -> Vec<String> {
        self.lock()
            .rooms
            .keys()
            .map(|name| name.to_string())
            .collect()
    }
}

/// One session's cursors, one per room it tracks. The server's
/// [`TrackedRooms`] counts them: a cursor made is tracked, a cursor
/// forgotten or dropped with the session is not.
#[derive(Debug, Default)]
pub struct RoomOrder {
    rooms: HashMap<Arc<str>, RoomCursor>,
    tracked: Arc<TrackedRooms>,
    /// How long a room first seen through a delivery holds its first
    /// messages (zero: written at once, starting at the first).
    first_seen_hold: Duration,
}

impl Drop for RoomOrder {
    fn drop(&mut self) {
        self.tracked.untrack(self.rooms.keys());
    }
}

impl RoomOrder {
    /// Cursors counted in `tracked`. Rooms first seen through a delivery
    /// wait `hold` for earlier seqs arriving over other links before
    /// anything is written.
    pub fn new(tracked: Arc<TrackedRooms>, hold: Duration) -> Self {
        RoomOrder {
            rooms: HashMap::new(),
            tracked,
            first_seen_hold: hold,
        }
    }

    #[cfg(test)]
    fn with_first_seen_hold(hold: Duration) -> Self {
        RoomOrder::new(Arc::default(), hold)
    }

    fn cursor(&mut self, room: &str) -> &mut RoomCursor {
        if !self.rooms.contains_key(room) {
            let name = self.tracked.track(room);
            self.rooms.insert(name, RoomCursor::default());
        }
        self.rooms.get_mut(room).expect("inserted above")
    }

    /// Everything up to `seq` counts as seen (the state at connect time).
    pub fn set_baseline(&mut self, room: &str, seq: u64) {
        self.cursor(room).last = seq;
    }

    /// Stops tracking `room` (the session is no longer a member).
    pub fn forget(&mut self, room: &str) -> bool {
        match self.rooms.remove_entry(room) {
            Some((name, _)) => {
                self.tracked.untrack([&name]);
                true
            }
            None => false,
        }
    }

    /// The store holds `room` up to `latest`. If that is beyond what this
    /// session has written or holds, a gap opens (its clock starts now, so
    /// a delivery still on its way closes it before any fill). Rooms not
    /// tracked are ignored.
    pub fn note_latest(&mut self, room: &str, latest: u64, now: Instant) {
        if let Some(cursor) = self.rooms.get_mut(room) {
            cursor.note_latest(latest, now);
        }
    }

    /// [`Self::note_latest`] for every tracked room found in `latest` (the
    /// server's catch-up map): one pass over this session's cursors, no
    /// allocation.
    pub fn note_latest_all(&mut self, latest: &LatestSeqs, now: Instant) {
        for (room, cursor) in &mut self.rooms {
            if let Some(seq) = latest.get(&**room) {
                cursor.note_latest(*seq, now);
            }
        }
    }

    /// A fill of `room` failed: the next attempt waits, doubling from
    /// `delay` up to [`MAX_FILL_BACKOFF`]. (A room whose gap closed
    /// meanwhile has nothing to back off.)
    pub fn fill_failed(&mut self, room: &str, now: Instant, delay: Duration) {
        if let Some(u) = self
            .rooms
            .get_mut(room)
            .and_then(|cursor| cursor.unsettled.as_mut())
        {
            u.fill_failures = u.fill_failures.saturating_add(1);
            let backoff = delay
                .max(Duration::from_millis(50))
                .saturating_mul(1 << u.fill_failures.min(16))
                .min(MAX_FILL_BACKOFF);
            u.fill_not_before = Some(now + backoff);
        }
    }

    pub fn last(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|c| c.last)
    }

    /// Moves the cursor back (or forward) to `seq` for a resume; later
    /// messages will be replayed from the store through [`Self::offer`].
    pub fn rewind(&mut self, room: &str, seq: u64) {
        let cursor = self.cursor(room);
        cursor.last = seq;
        if let Some(u) = cursor.unsettled.as_mut() {
            // An explicit start: nothing to wait for any more.
            u.hold_until = None;
            u.pending.retain(|s, _| *s > seq);
        }
        cursor.settle();
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
        // Looked up by &str, once: the room is almost always known.
        let cursor = match self.rooms.get_mut(room) {
            Some(cursor) => cursor,
            None => {
                let hold = self.first_seen_hold;
                let cursor = self.cursor(room);
                cursor.last = seq.saturating_sub(1);
                if !hold.is_zero() {
                    let u = cursor.unsettled();
                    u.hold_until = Some(now + hold);
                    u.pending.insert(seq, frame);
                    return;
                }
                cursor
            }
        };
        if let Some(u) = cursor.unsettled.as_mut().filter(|u| u.hold_until.is_some()) {
            // Holding, until the session releases the room (after asking
            // the store where the user joined, even if the hold is over by
            // now): an earlier seq moves the start back.
            if let btree_map::Entry::Vacant(entry) = u.pending.entry(seq) {
                cursor.last = cursor.last.min(seq.saturating_sub(1));
                entry.insert(frame);
            }
            return;
        }
        if seq <= cursor.last {
            return; // duplicate
        }
        if seq == cursor.last + 1 {
            out.push(frame);
            cursor.last = seq;
            cursor.drain_ready(now, out);
        } else {
            let u = cursor.unsettled();
            u.pending.insert(seq, frame);
            u.gap_since.get_or_insert(now);
        }
    }

    /// When the oldest open gap becomes due for a fill.
    pub fn next_fill_at(&self, delay: Duration) -> Option<Instant> {
        self.rooms.values().filter_map(|c| c.fill_at(delay)).min()
    }

    /// Rooms whose first-seen hold is over by `now`: before they are
    /// released, the session asks the store where the user joined them
    /// ([`Self::joined_at`]).
    pub fn holds_ending(&self, now: Instant) -> Vec<String> {
        self.rooms
            .iter()
            .filter(|(_, c)| c.hold_until().is_some_and(|t| now >= t))
            .map(|(room, _)| room.to_string())
            .collect()
    }

    /// The user joined `room` when it held `joined` (from the store): every
    /// later message is theirs. A held room starts there rather than at
    /// the lowest seq that happened to arrive, so what is missing between
    /// is a gap, due for a fill at once (the hold already waited as long as
    /// a gap would), and an earlier seq still on its way over a slow link
    /// is written, not dropped as a duplicate.
    pub fn joined_at(&mut self, room: &str, joined: u64, due: Instant) {
        if let Some(cursor) = self.rooms.get_mut(room) {
            if let Some(u) = cursor.unsettled.as_mut() {
                if u.hold_until.is_some() && joined < cursor.last {
                    cursor.last = joined;
                    u.gap_since = Some(due);
                }
            }
        }
    }

    /// Ends the holds of rooms first seen at least `first_seen_hold` ago:
    /// what they hold is written in order from the lowest seq that arrived.
    pub fn release_holds(&mut self, now: Instant, out: &mut Vec<Arc<str>>) {
        for cursor in self.rooms.values_mut() {
            if let Some(u) = cursor.unsettled.as_mut() {
                if u.hold_until.is_some_and(|t| now >= t) {
                    u.hold_until = None;
                    cursor.drain_ready(now, out);
                }
            }
        }
    }

    /// Gaps open for at least `delay` (and past their backoff).
    pub fn due_gaps(&self, now: Instant, delay: Duration) -> Vec<Gap> {
        self.rooms
            .iter()
            .filter(|(_, c)| c.hold_until().is_none())
            .filter(|(_, c)| c.fill_at(delay).is_some_and(|at| now >= at))
            .filter_map(|(room, c)| {
                let u = c.unsettled.as_ref()?;
                let (before, tail) = match u.pending.keys().next() {
                    Some(first) => (*first, false),
                    None if u.known_latest > c.last => (u.known_latest + 1, true),
                    None => return None,
                };
                Some(Gap {
                    room: room.to_string(),
                    after: c.last,
                    before,
                    tail,
                })
            })
            .collect()
    }

    /// After a fill from the store covered `gap`: messages of that gap the
    /// store no longer has (trimmed by retention) are skipped rather than
    /// holding the room back forever. Only that gap: a later gap is left to
    /// its own fill, since its messages may well be in history.
    pub fn skip_gap(&mut self, gap: &Gap, now: Instant, out: &mut Vec<Arc<str>>) {
        if let Some(cursor) = self.rooms.get_mut(gap.room.as_str()) {
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
        assert!(o.next_fill_at(Duration::ZERO).is_some());
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
                before: 5,
                tail: false,
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
            tail: false,
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
            tail: false,
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

    #[test]
    fn a_quiet_room_behind_the_store_opens_a_tail_gap() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 3);
        let t0 = Instant::now();
        let delay = Duration::from_millis(100);
        o.note_latest("r", 3, t0);
        assert_eq!(o.next_fill_at(delay), None, "not behind: no gap");
        o.note_latest("elsewhere", 9, t0);
        assert_eq!(o.next_fill_at(delay), None, "untracked rooms are ignored");
        o.note_latest("r", 7, t0);
        assert!(o.due_gaps(t0, delay).is_empty(), "a grace period first");
        assert_eq!(
            o.due_gaps(t0 + delay, delay),
            vec![Gap {
                room: "r".into(),
                after: 3,
                before: 8,
                tail: true,
            }]
        );
        // Deliveries still on their way close it before any fill.
        for seq in 4..=7 {
            assert_eq!(offer(&mut o, seq), vec![seq.to_string()]);
        }
        assert_eq!(o.next_fill_at(delay), None);
    }

    #[test]
    fn the_catch_up_map_opens_gaps_only_in_tracked_rooms_behind_it() {
        let mut o = RoomOrder::default();
        o.set_baseline("a", 3);
        o.set_baseline("b", 5);
        let t0 = Instant::now();
        let latest: LatestSeqs = [("a".into(), 4), ("b".into(), 5), ("other".into(), 9)].into();
        o.note_latest_all(&latest, t0);
        let gaps = o.due_gaps(t0 + Duration::from_secs(1), Duration::ZERO);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(
            (gaps[0].room.as_str(), gaps[0].after, gaps[0].before),
            ("a", 3, 5)
        );
    }

    #[test]
    fn a_tail_gap_with_later_deliveries_fills_up_to_the_first_of_them() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 1);
        let t0 = Instant::now();
        o.note_latest("r", 5, t0);
        assert!(offer(&mut o, 9).is_empty());
        let gaps = o.due_gaps(t0 + Duration::from_secs(1), Duration::ZERO);
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].after, gaps[0].before, gaps[0].tail), (1, 9, false));
    }

    #[test]
    fn failed_fills_back_off_and_a_success_resets() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 1);
        let t0 = Instant::now();
        let delay = Duration::from_millis(100);
        o.note_latest("r", 2, t0);
        o.fill_failed("r", t0 + delay, delay);
        let first = o.next_fill_at(delay).unwrap();
        assert_eq!(first, t0 + delay + delay * 2);
        o.fill_failed("r", first, delay);
        assert_eq!(o.next_fill_at(delay).unwrap(), first + delay * 4);
        for _ in 0..20 {
            o.fill_failed("r", first, delay);
        }
        assert_eq!(o.next_fill_at(delay).unwrap(), first + MAX_FILL_BACKOFF);
        assert_eq!(offer(&mut o, 2), vec!["2"]);
        assert_eq!(o.next_fill_at(delay), None);
        o.note_latest("r", 3, first);
        assert_eq!(o.next_fill_at(delay), Some(first + delay));
    }

    #[test]
    fn rooms_are_tracked_once_per_session_until_forgotten_or_dropped() {
        let tracked = Arc::new(TrackedRooms::default());
        let names = |t: &TrackedRooms| {
            let mut names = t.names();
            names.sort();
            names
        };
        let mut o = RoomOrder::new(tracked.clone(), Duration::ZERO);
        o.set_baseline("a", 1);
        o.set_baseline("a", 2);
        offer(&mut o, 5);
        let mut other = RoomOrder::new(tracked.clone(), Duration::ZERO);
        other.set_baseline("a", 1);
        assert_eq!(names(&tracked), vec!["a", "r"]);
        assert_eq!(
            tracked.lock().rooms.get("a"),
            Some(&2),
            "one count per session"
        );
        // The sessions share one copy of the name.
        let shared = |o: &RoomOrder| o.rooms.get_key_value("a").unwrap().0.clone();
        assert!(Arc::ptr_eq(&shared(&o), &shared(&other)));
        o.note_latest("r", 9, Instant::now());
        assert!(o.forget("r"));
        assert!(!o.forget("r"));
        assert_eq!(o.next_fill_at(Duration::ZERO), None);
        assert_eq!(names(&tracked), vec!["a"]);
        drop(o);
        assert_eq!(names(&tracked), vec!["a"]);
        drop(other);
        assert!(tracked.names().is_empty());
    }

    #[test]
    fn the_tracked_rooms_are_listed_again_only_after_one_starts_or_stops_being_tracked() {
        let tracked = Arc::new(TrackedRooms::default());
        let (seen, names) = tracked.names_since(None).unwrap();
        assert!(names.is_empty());
        assert!(tracked.names_since(Some(seen)).is_none());
        let mut o = RoomOrder::new(tracked.clone(), Duration::ZERO);
        o.set_baseline("a", 1);
        let (seen, names) = tracked.names_since(Some(seen)).unwrap();
        assert_eq!(names, [Arc::<str>::from("a")]);
        let mut other = RoomOrder::new(tracked.clone(), Duration::ZERO);
        other.set_baseline("a", 1);
        assert!(
            tracked.names_since(Some(seen)).is_none(),
            "one more session in it"
        );
        drop(o);
        assert!(
            tracked.names_since(Some(seen)).is_none(),
            "one session left in it"
        );
        drop(other);
        let (_, names) = tracked.names_since(Some(seen)).unwrap();
        assert!(names.is_empty());
    }

    /// A room in order keeps no gap state: it is most rooms of most
    /// sessions, and their memory.
    #[test]
    fn gap_state_is_dropped_once_the_gap_closes() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 1);
        let settled = |o: &RoomOrder| o.rooms["r"].unsettled.is_none();
        assert!(settled(&o));
        offer(&mut o, 3);
        o.note_latest("r", 4, Instant::now());
        assert!(!settled(&o));
        assert_eq!(offer(&mut o, 2), vec!["2", "3"]);
        assert!(!settled(&o), "4 is known to exist");
        assert_eq!(offer(&mut o, 4), vec!["4"]);
        assert!(settled(&o));
        o.note_latest("r", 4, Instant::now());
        assert!(settled(&o), "not behind the store");
        assert_eq!(std::mem::size_of::<RoomCursor>(), 16);
    }

    /// A resume past every waiting message closes the gap: no fill stays
    /// due (it would fire at once, again and again, until the room's next
    /// message).
    #[test]
    fn a_resume_past_the_waiting_messages_closes_the_gap() {
        let mut o = RoomOrder::default();
        o.set_baseline("r", 1);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 4, f("4"), t0, &mut out);
        assert!(o.next_fill_at(Duration::ZERO).is_some());
        o.rewind("r", 6);
        assert_eq!(o.next_fill_at(Duration::ZERO), None);
        assert!(o
            .due_gaps(t0 + Duration::from_secs(1), Duration::ZERO)
            .is_empty());
    }

    /// The path issue 12 named: a room first seen after connect (Bob was
    /// added while connected) gets seq 6 over one link before seq 5 over
    /// another. Both must be written, 5 first.
    #[test]
    fn a_room_first_seen_holds_for_earlier_seqs_from_other_links() {
        let hold = Duration::from_millis(100);
        let mut o = RoomOrder::with_first_seen_hold(hold);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 6, f("6"), t0, &mut out);
        o.offer("r", 5, f("5"), t0 + Duration::from_millis(10), &mut out);
        o.offer("r", 6, f("6"), t0 + Duration::from_millis(20), &mut out);
        assert!(out.is_empty(), "held");
        assert_eq!(o.next_fill_at(Duration::ZERO), Some(t0 + hold));
        assert!(o.due_gaps(t0 + hold, Duration::ZERO).is_empty());
        o.release_holds(t0 + hold, &mut out);
        let written = |out: &Vec<Arc<str>>| out.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(written(&out), vec!["5", "6"]);
        // After the hold, the room is like any other.
        o.offer("r", 7, f("7"), t0 + hold, &mut out);
        o.offer("r", 5, f("5"), t0 + hold, &mut out);
        assert_eq!(written(&out), vec!["5", "6", "7"]);
        assert_eq!(o.next_fill_at(Duration::ZERO), None);
    }

    /// A delivery after the hold ended but before the release ran is held
    /// too: only the release (which knows where the user joined) starts
    /// the room.
    #[test]
    fn an_offer_after_the_hold_waits_for_the_release() {
        let hold = Duration::from_millis(100);
        let mut o = RoomOrder::with_first_seen_hold(hold);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 3, f("3"), t0, &mut out);
        o.offer("r", 4, f("4"), t0 + hold * 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(o.holds_ending(t0 + hold * 2), vec!["r".to_string()]);
        o.release_holds(t0 + hold * 2, &mut out);
        let written: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, vec!["3", "4"]);
    }

    /// The loss path of issue 12: a room first seen after connect, where an
    /// earlier seq arrives only after the hold. Started at the seq the user
    /// joined at, the missing message is a gap filled at once, and the
    /// late copy is then a true duplicate.
    #[test]
    fn a_released_room_starts_where_the_user_joined() {
        let hold = Duration::from_millis(100);
        let delay = Duration::from_millis(100);
        let mut o = RoomOrder::with_first_seen_hold(hold);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 8, f("8"), t0, &mut out);
        let release = t0 + hold;
        assert_eq!(
            o.holds_ending(release - Duration::from_millis(1)),
            Vec::<String>::new()
        );
        assert_eq!(o.holds_ending(release), vec!["r".to_string()]);
        o.joined_at("r", 6, release - delay);
        o.release_holds(release, &mut out);
        assert!(out.is_empty(), "7 is missing");
        let gaps = o.due_gaps(release, delay);
        assert_eq!(
            gaps,
            vec![Gap {
                room: "r".into(),
                after: 6,
                before: 8,
                tail: false
            }]
        );
        // The fill brings 7; the copy of 7 arriving late is dropped.
        o.offer("r", 7, f("7"), release, &mut out);
        o.offer("r", 7, f("7"), release, &mut out);
        let written: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, vec!["7", "8"]);
        assert_eq!(o.next_fill_at(delay), None);
    }

    /// A join seq at or past what is held changes nothing.
    #[test]
    fn a_join_seq_never_moves_a_held_room_forward() {
        let hold = Duration::from_millis(100);
        let mut o = RoomOrder::with_first_seen_hold(hold);
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 3, f("3"), t0, &mut out);
        o.joined_at("r", 2, t0);
        o.joined_at("r", 9, t0);
        o.release_holds(t0 + hold, &mut out);
        let written: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, vec!["3"]);
        assert_eq!(o.next_fill_at(Duration::ZERO), None);
    }

    /// A resume sets the start explicitly: a held room stops holding, so
    /// the replay is written before `resumed`.
    #[test]
    fn a_resume_ends_a_hold() {
        let mut o = RoomOrder::with_first_seen_hold(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut out = Vec::new();
        o.offer("r", 5, f("5"), t0, &mut out);
        o.rewind("r", 2);
        for seq in 3..=5 {
            o.offer("r", seq, f(&seq.to_string()), t0, &mut out);
        }
        let written: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(written, vec!["3", "4", "5"]);
    }

    /// Rooms known at connect (a baseline) never hold.
    #[test]
    fn rooms_with_a_baseline_do_not_hold() {
        let mut o = RoomOrder::with_first_seen_hold(Duration::from_secs(1));
        o.set_baseline("r", 0);
        assert_eq!(offer(&mut o, 1), vec!["1"]);
    }
}
