//! The presence indexes a process last read, by version (issue 13).
//!
//! Every append answers with the room's presence index, the sessions the
//! message must reach. A room of 5,000 members online has 5,000 entries:
//! turning them into a reply, sending and parsing them for every message
//! cost more than the append itself. Each change to an index writes a new
//! random version beside it in the same step, and an append is told the
//! index only if the caller's copy has another version (`lua/append.lua`).
//! The check and the append are one step, so a copy used is exactly the
//! index as of that append.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{OnlineSession, StoreResult};

/// A room's index as this process holds it, with its version.
pub(crate) type Held = Option<(String, Arc<[OnlineSession]>)>;

/// Most index entries kept over all rooms (about 150 bytes each): past it
/// the cache starts again empty, which costs one full index per room.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub(crate) struct OnlineCache {
    inner: Mutex<Inner>,
    sent: AtomicU64,
    reused: AtomicU64,
}

/// How appends came by the presence index so far (`/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PresenceIndexStats {
    /// Appends whose reply carried the index.
    pub sent: u64,
    /// Appends that used the index this process held.
    pub reused: u64,
}

/// The counters a process exports from [`PresenceIndexStats`] (name after
/// the process's prefix, help, value).
#[allow(clippy::type_complexity)]
pub const PRESENCE_INDEX_COUNTERS: [(&str, &str, fn(&PresenceIndexStats) -> u64); 2] = [
    (
        "presence_index_sent_total",
        "Appends whose reply carried the room's presence index (it changed, or this process held none).",
        |s| s.sent,
    ),
    (
        "presence_index_reused_total",
        "Appends that routed with the presence index this process held (unchanged since).",
        |s| s.reused,
    ),
];

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, (String, Arc<[OnlineSession]>)>,
    entries: usize,
}

impl OnlineCache {
    /// Counts a read that was sent the index or used the one held.
    fn count(&self, reused: bool) {
        let counter = if reused { &self.reused } else { &self.sent };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> PresenceIndexStats {
        PresenceIndexStats {
            sent: self.sent.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
    }

    /// The room's index as last seen, with its version.
    pub(crate) fn get(&self, room: &str) -> Held {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.rooms.get(room).cloned()
    }

    /// What a script is told of `held`: its version ('' for none) and its
    /// number of entries.
    pub(crate) fn script_args(held: &Held) -> (&str, usize) {
        held.as_ref().map_or(("", 0), |(version, online)| {
            (version.as_str(), online.len())
        })
    }

    /// The index after a script's reply: the one held if the script said
    /// it is current, else the one sent (`decode`), kept at `version`.
    pub(crate) fn settle(
        &self,
        room: &str,
        held: Held,
        current: bool,
        version: String,
        decode: impl FnOnce() -> StoreResult<Vec<OnlineSession>>,
    ) -> StoreResult<Arc<[OnlineSession]>> {
        self.count(current);
        if let (true, Some((_, online))) = (current, held) {
            return Ok(online);
        }
        let online: Arc<[OnlineSession]> = decode()?.into();
        if !version.is_empty() {
            self.put(room, version, online.clone());
        }
        Ok(online)
    }

    /// Keeps `online` as the room's index at `version`.
    pub(crate) fn put(&self, room: &str, version: String, online: Arc<[OnlineSession]>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let added = online.len();
        if added > MAX_ENTRIES {
            inner.forget(room);
            return;
        }
        if inner.entries + added > MAX_ENTRIES {
            inner.rooms.clear();
            inner.entries = 0;
        }
        inner.entries += added;
        if let Some((_, old)) = inner.rooms.insert(room.to_owned(), (version, online)) {
            inner.entries -= old.len();
        }
    }
}

impl Inner {
    fn forget(&mut self, room: &str) {
        if let Some((_, old)) = self.rooms.remove(room) {
            self.entries -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(n: usize) -> Arc<[OnlineSession]> {
        (0..n)
            .map(|i| OnlineSession {
                user: format!("u{i}"),
                session: format!("s{i}"),
                server_id: "cs".into(),
            })
            .collect()
    }

    #[test]
    fn a_room_keeps_its_latest_version() {
        let cache = OnlineCache::default();
        assert!(cache.get("r").is_none());
        cache.put("r", "v1".into(), index(2));
        cache.put("r", "v2".into(), index(3));
        let (version, online) = cache.get("r").unwrap();
        assert_eq!((version.as_str(), online.len()), ("v2", 3));
        assert_eq!(cache.inner.lock().unwrap().entries, 3);
    }

    #[test]
    fn past_the_bound_it_starts_again_and_never_holds_an_oversized_index() {
        let cache = OnlineCache::default();
        cache.put("a", "v".into(), index(MAX_ENTRIES - 10));
        cache.put("b", "v".into(), index(20));
        assert!(cache.get("a").is_none(), "emptied to make room");
        assert!(cache.get("b").is_some());
        cache.put("b", "w".into(), index(MAX_ENTRIES + 1));
        assert!(cache.get("b").is_none(), "too large to keep");
        assert_eq!(cache.inner.lock().unwrap().entries, 0);
    }
}
