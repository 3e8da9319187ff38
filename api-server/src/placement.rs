//! [`PlacementPolicy`]: which chat server a new client should use.
//!
//! Only ready servers with room left qualify. Load first: the score is a
//! server's connections plus tickets handed out but not yet used, so a
//! burst of connects alternates between servers instead of piling onto the
//! one that looked emptiest at the last health report. Then the client's
//! rooms: among the servers whose score is within an allowance of the
//! lowest, the one where most of the client's rooms already have online
//! members wins. A message then crosses to fewer chat servers and fewer
//! servers follow each room: a room's members spread over the servers cost
//! a hop per server for each of its messages (docs/benchmarks.md,
//! "Scale-out on one machine", "Rooms kept together by placement"). The
//! reported load figure breaks ties, then the id (deterministic for tests).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_protocol::rest::ServerState;
use chat_store::{RoomServers, RoomsRead, ServerSnapshot, StoreResult};

/// How much of a client's rooms placement reads, on every connect's path:
/// up to 64 rooms (a user in more is placed by a sample of them); a room of
/// more than 256 live sessions does not steer, as it spans every server
/// anyway; of a room's sessions, the servers of a sample of 16.
pub const ROOMS_READ: RoomsRead = RoomsRead {
    rooms: 64,
    max_sessions: 256,
    sessions: 16,
};

/// How long a connect waits for its rooms before placing by load alone:
/// a read takes a millisecond or two, longer only when Redis is in trouble.
pub const ROOMS_READ_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct PlacementPolicy {
    /// Servers at or above this load figure (0..=1) get no new clients.
    pub max_load: f64,
    /// How much busier than the least busy ready server (in connections
    /// plus pending tickets) a server may be and still be chosen for the
    /// client's rooms: the larger of this count and
    /// [`Self::room_affinity_slack`] of the least busy server's score.
    pub room_affinity_connections: u64,
    /// The same as a fraction of the least busy server's score.
    pub room_affinity_slack: f64,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            max_load: 1.0,
            room_affinity_connections: 32,
            room_affinity_slack: 0.05,
        }
    }
}

impl PlacementPolicy {
    /// Whether a client's rooms can change the choice, so that they are
    /// worth reading.
    pub fn uses_rooms(&self) -> bool {
        self.room_affinity_connections > 0 || self.room_affinity_slack > 0.0
    }

    /// The least busy server, by load alone.
    pub fn choose<'a>(&self, servers: &'a [ServerSnapshot]) -> Option<&'a ServerSnapshot> {
        self.choose_beside_rooms(servers, |_| 0)
    }

    /// The server for a client, `rooms_on(server id)` being how many of the
    /// client's rooms have online members on that server.
    pub fn choose_beside_rooms<'a>(
        &self,
        servers: &'a [ServerSnapshot],
        rooms_on: impl Fn(&str) -> usize,
    ) -> Option<&'a ServerSnapshot> {
        let score = |s: &ServerSnapshot| s.health.connections + s.pending_tickets;
        let ready = || {
            servers
                .iter()
                .filter(|s| s.health.state == ServerState::Ready && s.health.load < self.max_load)
        };
        let least = ready().map(score).min()?;
        let allowance = self
            .room_affinity_connections
            .max((least as f64 * self.room_affinity_slack.max(0.0)) as u64);
        let within = least.saturating_add(allowance);
        ready()
            .filter(|s| score(s) <= within)
            .map(|s| (rooms_on(&s.health.id), s))
            .min_by(|(rooms_a, a), (rooms_b, b)| {
                rooms_b
                    .cmp(rooms_a)
                    .then(score(a).cmp(&score(b)))
                    .then(a.health.load.total_cmp(&b.health.load))
                    .then(a.health.id.cmp(&b.health.id))
            })
            .map(|(_, s)| s)
    }
}

/// What `read` (the store's [`chat_store::Store::room_servers_of_user`])
/// answers, or no rooms if it fails or takes longer than `timeout`: the
/// rooms only refine the choice, and a master failing over must not hold
/// up a reconnect.
pub async fn rooms_within(
    read: impl std::future::Future<Output = StoreResult<Vec<RoomServers>>>,
    timeout: Duration,
) -> Vec<RoomServers> {
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(rooms)) => rooms,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "rooms unread; placing by load alone");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!("rooms read timed out; placing by load alone");
            Vec::new()
        }
    }
}

/// The rooms of the clients this API replica placed in the last
/// [`RecentPlacements::WINDOW`], by server. A session enters its rooms'
/// presence indexes only once its WebSocket opens, so without these a
/// burst of room-mates (a room's members reconnecting together after a
/// drain) would be spread before any of them shows in the store.
#[derive(Debug, Default)]
pub struct RecentPlacements {
    placed: VecDeque<(Instant, Arc<str>, Vec<String>)>,
    /// Room -> servers it was placed on in the window, with counts.
    by_room: HashMap<String, Vec<(Arc<str>, u32)>>,
    /// Rooms over all of `placed`.
    rooms_held: usize,
}

impl RecentPlacements {
    /// Long enough for a placed client to open its WebSocket and its
    /// session to reach the presence indexes; a ticket that is never used
    /// steers for no longer than this.
    pub const WINDOW: Duration = Duration::from_secs(2);

    /// Most rooms remembered over all placements (the oldest go first
    /// past it): a reconnect storm of users in many rooms would otherwise
    /// hold connects/s x 2 s x rooms entries (about 100 bytes each).
    pub const MAX_ROOMS: usize = 100_000;

    /// Forgets placements older than the window, and the oldest beyond
    /// [`Self::MAX_ROOMS`].
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.placed.front() {
            if now.duration_since(*at) < Self::WINDOW && self.rooms_held <= Self::MAX_ROOMS {
                break;
            }
            let Some((_, server, rooms)) = self.placed.pop_front() else {
                break;
            };
            self.rooms_held -= rooms.len();
            for room in rooms {
                let Some(servers) = self.by_room.get_mut(&room) else {
                    continue;
                };
                if let Some(i) = servers.iter().position(|(s, _)| *s == server) {
                    servers[i].1 -= 1;
                    if servers[i].1 == 0 {
                        servers.swap_remove(i);
                    }
                }
                if servers.is_empty() {
                    self.by_room.remove(&room);
                }
            }
        }
    }

    /// Notes a client with `rooms` placed on `server`.
    pub fn note(&mut self, now: Instant, server: &str, rooms: Vec<String>) {
        if rooms.is_empty() {
            return;
        }
        let server: Arc<str> = Arc::from(server);
        for room in &rooms {
            let servers = self.by_room.entry(room.clone()).or_default();
            match servers.iter_mut().find(|(s, _)| *s == server) {
                Some((_, n)) => *n += 1,
                None => servers.push((server.clone(), 1)),
            }
        }
        self.rooms_held += rooms.len();
        self.placed.push_back((now, server, rooms));
    }

    /// Whether a client of `room` was placed on `server` in the window.
    pub fn placed(&self, room: &str, server: &str) -> bool {
        self.by_room
            .get(room)
            .is_some_and(|servers| servers.iter().any(|(s, _)| &**s == server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_store::{ServerHealth, StoreError};

    fn server(
        id: &str,
        connections: u64,
        pending: u64,
        state: ServerState,
        load: f64,
    ) -> ServerSnapshot {
        ServerSnapshot {
            health: ServerHealth {
                id: id.into(),
                url: String::new(),
                internal_url: String::new(),
                state,
                connections,
                load,
                last_seen_ms: 0,
                tickets_in_own_slot: true,
                tracks_used_tickets: true,
            },
            pending_tickets: pending,
        }
    }

    #[test]
    fn picks_the_fewest_connections_plus_pending_tickets() {
        let servers = [
            server("a", 10, 0, ServerState::Ready, 0.1),
            server("b", 4, 7, ServerState::Ready, 0.1),
            server("c", 6, 2, ServerState::Ready, 0.1),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "c"
        );
    }

    #[test]
    fn never_picks_draining_or_full_servers() {
        let servers = [
            server("a", 0, 0, ServerState::Draining, 0.0),
            server("b", 0, 0, ServerState::Ready, 1.0),
            server("c", 50, 0, ServerState::Ready, 0.5),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "c"
        );
        assert!(PlacementPolicy::default().choose(&servers[..2]).is_none());
        assert!(PlacementPolicy::default().choose(&[]).is_none());
    }

    #[test]
    fn ties_break_on_load_then_id() {
        let servers = [
            server("b", 1, 0, ServerState::Ready, 0.2),
            server("a", 1, 0, ServerState::Ready, 0.3),
            server("c", 1, 0, ServerState::Ready, 0.2),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "b"
        );
    }

    #[test]
    fn a_burst_alternates_when_pending_tickets_are_counted() {
        let mut servers = vec![
            server("a", 0, 0, ServerState::Ready, 0.0),
            server("b", 0, 0, ServerState::Ready, 0.0),
        ];
        let mut counts = [0, 0];
        for _ in 0..100 {
            let i = servers
                .iter()
                .position(|s| {
                    s.health.id
                        == PlacementPolicy::default()
                            .choose(&servers)
                            .unwrap()
                            .health
                            .id
                })
                .unwrap();
            servers[i].pending_tickets += 1;
            counts[i] += 1;
        }
        assert_eq!(counts, [50, 50]);
    }

    fn chosen(
        policy: &PlacementPolicy,
        servers: &[ServerSnapshot],
        rooms: &[(&str, usize)],
    ) -> String {
        let rooms_on = |id: &str| rooms.iter().find(|(s, _)| *s == id).map_or(0, |(_, n)| *n);
        policy
            .choose_beside_rooms(servers, rooms_on)
            .unwrap()
            .health
            .id
            .clone()
    }

    #[test]
    fn a_client_goes_where_most_of_its_rooms_are_within_the_allowance() {
        let policy = PlacementPolicy::default(); // 32 connections, 5 %
        let servers = [
            server("a", 10, 0, ServerState::Ready, 0.1),
            server("b", 30, 12, ServerState::Ready, 0.1),
            server("c", 43, 0, ServerState::Ready, 0.1),
            server("d", 0, 0, ServerState::Draining, 0.0),
        ];
        assert_eq!(chosen(&policy, &servers, &[]), "a");
        assert_eq!(chosen(&policy, &servers, &[("b", 1)]), "b", "42 <= 10 + 32");
        assert_eq!(chosen(&policy, &servers, &[("b", 1), ("a", 2)]), "a");
        assert_eq!(chosen(&policy, &servers, &[("c", 5)]), "a", "43 > 10 + 32");
        assert_eq!(chosen(&policy, &servers, &[("d", 5)]), "a", "draining");
        assert_eq!(chosen(&policy, &servers, &[("b", 2), ("c", 2)]), "b");
        // The allowance as a fraction of the least busy server's score.
        let busy = [
            server("a", 1000, 0, ServerState::Ready, 0.1),
            server("b", 1050, 0, ServerState::Ready, 0.1),
            server("c", 1051, 0, ServerState::Ready, 0.1),
        ];
        assert_eq!(chosen(&policy, &busy, &[("b", 1)]), "b");
        assert_eq!(chosen(&policy, &busy, &[("c", 1)]), "a");
        // Without an allowance, rooms only break ties of load.
        let off = PlacementPolicy {
            room_affinity_connections: 0,
            room_affinity_slack: 0.0,
            ..PlacementPolicy::default()
        };
        assert!(!off.uses_rooms() && PlacementPolicy::default().uses_rooms());
        assert_eq!(chosen(&off, &servers, &[("b", 1)]), "a");
        assert_eq!(chosen(&off, &busy[..1], &[("a", 1)]), "a");
    }

    #[tokio::test]
    async fn a_failed_or_slow_rooms_read_places_by_load() {
        let room = || RoomServers {
            room: "r".into(),
            servers: vec!["a".into()],
        };
        let long = Duration::from_secs(60);
        assert_eq!(
            rooms_within(async { Ok(vec![room()]) }, long).await,
            vec![room()]
        );
        let failed = async { Err(StoreError::Unavailable("down".into())) };
        assert!(rooms_within(failed, long).await.is_empty());
        let hung = std::future::pending();
        assert!(rooms_within(hung, Duration::from_millis(10))
            .await
            .is_empty());
    }

    #[test]
    fn recent_placements_steer_for_the_window() {
        let mut recent = RecentPlacements::default();
        let t0 = Instant::now();
        recent.note(t0, "a", vec!["r1".into(), "r2".into()]);
        recent.note(t0 + Duration::from_secs(1), "a", vec!["r1".into()]);
        recent.note(t0 + Duration::from_secs(1), "b", vec!["r2".into()]);
        assert!(recent.placed("r1", "a") && recent.placed("r2", "a") && recent.placed("r2", "b"));
        assert!(!recent.placed("r1", "b") && !recent.placed("r3", "a"));
        recent.expire(t0 + RecentPlacements::WINDOW);
        assert!(recent.placed("r1", "a"), "placed again a second later");
        assert!(!recent.placed("r2", "a") && recent.placed("r2", "b"));
        recent.expire(t0 + RecentPlacements::WINDOW + Duration::from_secs(1));
        assert!(recent.placed.is_empty() && recent.by_room.is_empty());
        assert_eq!(recent.rooms_held, 0);
    }

    #[test]
    fn recent_placements_keep_at_most_their_bound_of_rooms() {
        let mut recent = RecentPlacements::default();
        let now = Instant::now();
        let rooms = |i: usize| (0..1_000).map(|j| format!("r{i}-{j}")).collect();
        for i in 0..=RecentPlacements::MAX_ROOMS / 1_000 {
            recent.note(now, "a", rooms(i));
        }
        recent.expire(now);
        assert_eq!(recent.rooms_held, RecentPlacements::MAX_ROOMS);
        assert!(!recent.placed("r0-0", "a"), "the oldest went first");
        assert!(recent.placed("r1-0", "a") && recent.placed("r100-999", "a"));
    }

    /// Room-mates connecting together, their rooms' members not yet online
    /// anywhere: each room lands on one server, and the servers stay
    /// within the allowance of each other.
    #[test]
    fn a_burst_of_room_mates_keeps_each_room_on_one_server() {
        let policy = PlacementPolicy::default();
        let mut servers: Vec<ServerSnapshot> = ["a", "b", "c", "d"]
            .map(|id| server(id, 0, 0, ServerState::Ready, 0.0))
            .into();
        let mut recent = RecentPlacements::default();
        let now = Instant::now();
        let mut rooms_at: HashMap<String, Vec<String>> = HashMap::new();
        for i in 0..400 {
            let room = format!("r{}", i % 40); // 40 rooms of 10, interleaved
            let id = policy
                .choose_beside_rooms(&servers, |id| usize::from(recent.placed(&room, id)))
                .unwrap()
                .health
                .id
                .clone();
            recent.note(now, &id, vec![room.clone()]);
            servers
                .iter_mut()
                .find(|s| s.health.id == id)
                .unwrap()
                .pending_tickets += 1;
            rooms_at.entry(room).or_default().push(id);
        }
        for (room, at) in &rooms_at {
            assert!(at.iter().all(|s| *s == at[0]), "{room} spread: {at:?}");
        }
        let scores: Vec<u64> = servers.iter().map(|s| s.pending_tickets).collect();
        let (min, max) = (scores.iter().min().unwrap(), scores.iter().max().unwrap());
        assert!(max - min <= 32 + 10, "{scores:?}");
    }
}
