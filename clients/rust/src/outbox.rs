//! Sends not yet acknowledged. Each keeps the `client_msg_id` it was given
//! when the application called `send`, and every retry (after a reconnect,
//! an `unavailable`, a timeout, a `rate_limited`) repeats that id, so the
//! server stores the message once however many times it reaches it.
//!
//! Pure: no timers and no sockets. The connection driver asks which sends
//! are due ([`Outbox::due`]), reports what happened to them, and sleeps
//! until [`Outbox::next_deadline`]. Times are milliseconds on any monotonic
//! clock. `R` is whatever settles the caller's future (a oneshot sender).

use std::collections::BTreeMap;

/// Where a send is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// To be written (at or after `at`).
    Queued,
    /// Written at `at`, waiting for the ack.
    Inflight,
}

/// One send.
#[derive(Debug)]
pub struct OutboxEntry<R> {
    pub client_msg_id: String,
    pub room: String,
    pub body: String,
    pub state: EntryState,
    pub at: u64,
    pub attempts: u32,
    /// Order of arrival: due sends are written oldest first.
    order: u64,
    pub settle: R,
}

/// The sends of one client.
#[derive(Debug)]
pub struct Outbox<R> {
    entries: BTreeMap<String, OutboxEntry<R>>,
    next_order: u64,
    /// After a `rate_limited`, nothing is written before this time.
    paused_until: u64,
}

impl<R> Default for Outbox<R> {
    fn default() -> Self {
        Outbox {
            entries: BTreeMap::new(),
            next_order: 0,
            paused_until: 0,
        }
    }
}

impl<R> Outbox<R> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a send. A `client_msg_id` already pending is replaced (the
    /// caller repeated its own id: the server stores it once anyway).
    pub fn add(&mut self, client_msg_id: String, room: String, body: String, settle: R, now: u64) {
        let order = self.next_order;
        self.next_order += 1;
        self.entries.insert(
            client_msg_id.clone(),
            OutboxEntry {
                client_msg_id,
                room,
                body,
                state: EntryState::Queued,
                at: now,
                attempts: 0,
                order,
                settle,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, client_msg_id: &str) -> Option<&OutboxEntry<R>> {
        self.entries.get(client_msg_id)
    }

    /// Queued sends that may be written now, oldest first, as
    /// `(client_msg_id, room, body)`; they become inflight.
    pub fn due(&mut self, now: u64) -> Vec<(String, String, String)> {
        if now < self.paused_until {
            return Vec::new();
        }
        let mut due: Vec<&mut OutboxEntry<R>> = self
            .entries
            .values_mut()
            .filter(|e| e.state == EntryState::Queued && e.at <= now)
            .collect();
        due.sort_by_key(|e| e.order);
        due.into_iter()
            .map(|e| {
                e.state = EntryState::Inflight;
                e.at = now;
                e.attempts += 1;
                (e.client_msg_id.clone(), e.room.clone(), e.body.clone())
            })
            .collect()
    }

    /// Removes and returns the entry an ack or a final error settles.
    pub fn settle(&mut self, client_msg_id: &str) -> Option<OutboxEntry<R>> {
        self.entries.remove(client_msg_id)
    }

    /// Not stored this time (`unavailable`): write again at `retry_at`.
    pub fn retry_at(&mut self, client_msg_id: &str, retry_at: u64) {
        if let Some(e) = self.entries.get_mut(client_msg_id) {
            e.state = EntryState::Queued;
            e.at = retry_at;
        }
    }

    /// `rate_limited`: this send is queued again and nothing is written
    /// until `until`.
    pub fn pause(&mut self, client_msg_id: &str, until: u64) {
        self.retry_at(client_msg_id, until);
        self.paused_until = self.paused_until.max(until);
    }

    /// The connection is gone: everything inflight is written again on the
    /// next one.
    pub fn requeue_inflight(&mut self, now: u64) {
        for e in self.entries.values_mut() {
            if e.state == EntryState::Inflight {
                e.state = EntryState::Queued;
                e.at = now;
            }
        }
    }

    /// Whether an inflight send has waited longer than `timeout_ms`.
    pub fn has_timed_out(&self, now: u64, timeout_ms: u64) -> bool {
        self.entries
            .values()
            .any(|e| e.state == EntryState::Inflight && now.saturating_sub(e.at) >= timeout_ms)
    }

    /// The next time something is due: a retry, the end of a pause, or a
    /// timeout.
    pub fn next_deadline(&self, timeout_ms: u64) -> Option<u64> {
        self.entries
            .values()
            .map(|e| match e.state {
                EntryState::Inflight => e.at + timeout_ms,
                EntryState::Queued => e.at.max(self.paused_until),
            })
            .min()
    }

    /// Removes and returns everything (the client is closing).
    pub fn take_all(&mut self) -> Vec<OutboxEntry<R>> {
        std::mem::take(&mut self.entries).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(due: &[(String, String, String)]) -> Vec<&str> {
        due.iter().map(|d| d.0.as_str()).collect()
    }

    #[test]
    fn sends_are_written_once_until_requeued_oldest_first() {
        let mut o = Outbox::new();
        o.add("b".into(), "r".into(), "1".into(), (), 0);
        o.add("a".into(), "r".into(), "2".into(), (), 0);
        assert_eq!(ids(&o.due(0)), ["b", "a"]);
        assert!(o.due(1).is_empty());
        o.requeue_inflight(5);
        assert_eq!(ids(&o.due(5)), ["b", "a"]);
        assert_eq!(o.get("b").unwrap().attempts, 2);
        assert!(o.settle("b").is_some());
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn timeouts_and_retries_set_the_deadline() {
        let mut o = Outbox::new();
        o.add("a".into(), "r".into(), "x".into(), (), 0);
        o.due(0);
        assert_eq!(o.next_deadline(100), Some(100));
        assert!(!o.has_timed_out(99, 100));
        assert!(o.has_timed_out(100, 100));
        o.retry_at("a", 40);
        assert_eq!(o.next_deadline(100), Some(40));
        assert!(o.due(39).is_empty());
        assert_eq!(ids(&o.due(40)), ["a"]);
    }

    #[test]
    fn rate_limited_pauses_every_send() {
        let mut o = Outbox::new();
        o.add("a".into(), "r".into(), "x".into(), (), 0);
        o.add("b".into(), "r".into(), "y".into(), (), 0);
        o.due(0);
        o.pause("a", 50);
        o.requeue_inflight(10);
        assert!(o.due(10).is_empty(), "paused");
        assert_eq!(o.next_deadline(1000), Some(50));
        assert_eq!(ids(&o.due(50)), ["a", "b"]);
    }

    #[test]
    fn take_all_empties_it() {
        let mut o = Outbox::new();
        o.add("a".into(), "r".into(), "x".into(), 1, 0);
        assert_eq!(o.take_all().len(), 1);
        assert!(o.is_empty());
        assert_eq!(o.next_deadline(10), None);
    }
}
