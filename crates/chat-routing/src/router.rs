//! [`MessageRouter`]: from a stored message to the chat servers that need it.
//!
//! The room's presence index (its members' live sessions, see
//! [`chat_store::OnlineSession`]) -> group users by live chat server -> one
//! [`Delivery`] per server, carrying the frame serialised once. The append
//! script returns the index with the seq it assigns, so a message costs no
//! read beyond its append: a member added to a room receives the room's
//! next message without reconnecting, and a removed one stops receiving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_protocol::{Message, ServerFrame};
use chat_store::{OnlineSession, Store, StoreResult};

use crate::delivery::Delivery;
use crate::link::LinkPool;
use crate::registry::ServerRegistry;

/// The chat server's own hub, so that deliveries for local sessions skip
/// the network.
pub trait LocalDelivery: Send + Sync + 'static {
    fn deliver(&self, delivery: Arc<Delivery>);
}

/// The fan-out grouping: a room's online sessions by chat server, each
/// server's users sorted and named once (a user with two sessions on one
/// server is one recipient there), without `exclude_user`. One delivery is
/// made per entry of the result.
pub fn group_by_server<'a>(
    online: &'a [OnlineSession],
    exclude_user: Option<&str>,
) -> HashMap<&'a str, Vec<&'a str>> {
    let mut by_server: HashMap<&str, Vec<&str>> = HashMap::new();
    for entry in online {
        if exclude_user != Some(entry.user.as_str()) {
            by_server
                .entry(entry.server_id.as_str())
                .or_default()
                .push(entry.user.as_str());
        }
    }
    for users in by_server.values_mut() {
        users.sort_unstable();
        users.dedup();
    }
    by_server.retain(|_, users| !users.is_empty());
    by_server
}

/// Who among a room's online sessions gets an ephemeral frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients<'a> {
    All,
    /// Everyone but this user (typing, presence).
    AllBut(&'a str),
    /// This user's sessions only (a read in a large room).
    Only(&'a str),
}

pub struct MessageRouter {
    store: Arc<dyn Store>,
    fanout_limits: crate::FanoutLimits,
    registry: Arc<ServerRegistry>,
    links: Arc<LinkPool>,
    local: Option<(String, Arc<dyn LocalDelivery>)>,
    /// Servers with index entries that a fresh registry read did not list:
    /// skipped without another read, and their entries forgotten once they
    /// have been gone for [`FORGET_MISSING_AFTER`] without a break.
    missing: Mutex<HashMap<String, MissingSince>>,
    forget_missing_after: Duration,
    /// Bounds the presence audience reads in flight (see
    /// [`PRESENCE_READS_IN_FLIGHT`]).
    pub(crate) presence_reads: tokio::sync::Semaphore,
}

/// Most presence audience reads one process keeps in flight. A close storm
/// (every session of a drained or lost server, or of the bench, closing at
/// once) makes one read per room of every user going offline: all at once
/// they queued in the Redis client past its response timeout, and those
/// rooms' "offline" events were dropped (thousands per run with 5,000
/// users in 20 rooms, docs/benchmarks.md). Waiting here for a turn, the
/// timeout covers the read alone.
pub const PRESENCE_READS_IN_FLIGHT: usize = 256;

/// How often routing may read the registry for a server it does not know.
const REFRESH_MIN_AGE: Duration = Duration::from_millis(100);

/// A server not seen missing for this long was back (or nobody routed to
/// it): the next time it is missing is a new absence, timed from then.
/// Without this, one absence long ago plus a short blip today added up to
/// "missing for long", and a live server's sessions were forgotten.
const MISSING_EPISODE_GAP: Duration = Duration::from_secs(5);

/// One absence of a server from the registry, as routing saw it.
#[derive(Debug, Clone, Copy)]
struct MissingSince {
    since: Instant,
    last_seen_missing: Instant,
}

/// Records that `server_id` is missing at `now` and returns since when it
/// has been missing without a break.
fn note_missing(
    missing: &mut HashMap<String, MissingSince>,
    server_id: &str,
    now: Instant,
) -> Instant {
    // No key allocation per message while the server stays missing.
    if let Some(entry) = missing.get_mut(server_id) {
        if now.saturating_duration_since(entry.last_seen_missing) <= MISSING_EPISODE_GAP {
            entry.last_seen_missing = now;
            return entry.since;
        }
    }
    missing.insert(
        server_id.to_owned(),
        MissingSince {
            since: now,
            last_seen_missing: now,
        },
    );
    now
}

/// How long a server must be missing from the registry before routers drop
/// its sessions from the rooms' indexes. Long enough that a server merely
/// late with its heartbeats keeps them; a server that was cut off from the
/// store announces its sessions again when it is back (see chat-server).
pub const FORGET_MISSING_AFTER: Duration = Duration::from_secs(60);

impl MessageRouter {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<ServerRegistry>,
        links: Arc<LinkPool>,
        local: Option<(String, Arc<dyn LocalDelivery>)>,
    ) -> Self {
        MessageRouter {
            store,
            fanout_limits: crate::FanoutLimits::default(),
            registry,
            links,
            local,
            missing: Mutex::new(HashMap::new()),
            forget_missing_after: FORGET_MISSING_AFTER,
            presence_reads: tokio::sync::Semaphore::new(PRESENCE_READS_IN_FLIGHT),
        }
    }

    /// Sets how far read receipts and presence events fan out.
    pub fn with_fanout_limits(mut self, limits: crate::FanoutLimits) -> Self {
        self.fanout_limits = limits;
        self
    }

    pub fn registry(&self) -> &Arc<ServerRegistry> {
        &self.registry
    }

    pub fn fanout_limits(&self) -> crate::FanoutLimits {
        self.fanout_limits
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Overrides [`FORGET_MISSING_AFTER`] (tests).
    pub fn with_forget_missing_after(mut self, after: Duration) -> Self {
        self.forget_missing_after = after;
        self
    }

    /// Delivers a stored message to the sessions in `online`, the room's
    /// presence index as the append read it. Returns the number of chat
    /// servers the frame was handed to. Nothing here can fail: a server
    /// that is unreachable gets the frame when its link reconnects, or its
    /// sessions recover it by gap fill or `resume`.
    pub async fn route_message(&self, message: &Message, online: &[OnlineSession]) -> usize {
        if online.is_empty() {
            return 0;
        }
        let frame: Arc<str> = Arc::from(chat_protocol::frame::message_frame_json(message));
        let stamp = (message.seq, message.ts);
        self.route(&message.room, stamp, frame, online, None).await
    }

    /// Relays a typing notice to the room's other members.
    pub async fn route_typing(&self, room: &str, user: &str) -> StoreResult<usize> {
        let online = self.store.room_online(room).await?;
        if online.iter().all(|s| s.user == user) {
            return Ok(0);
        }
        let frame: Arc<str> = Arc::from(
            ServerFrame::Typing {
                room: room.to_owned(),
                user: user.to_owned(),
            }
            .to_json(),
        );
        Ok(self
            .route_ephemeral(room, frame, &online, Recipients::AllBut(user))
            .await)
    }

    /// Routes a frame that is not a stored message (seq 0: written as is,
    /// not ordered) to `recipients` among `online`.
    pub async fn route_ephemeral(
        &self,
        room: &str,
        frame: Arc<str>,
        online: &[OnlineSession],
        recipients: Recipients<'_>,
    ) -> usize {
        match recipients {
            Recipients::All => self.route(room, (0, 0), frame, online, None).await,
            Recipients::AllBut(user) => self.route(room, (0, 0), frame, online, Some(user)).await,
            Recipients::Only(user) => {
                let own: Vec<OnlineSession> =
                    online.iter().filter(|s| s.user == user).cloned().collect();
                self.route(room, (0, 0), frame, &own, None).await
            }
        }
    }

    /// `(seq, ts_ms)`: a stored message's, or zeros for an ephemeral frame.
    async fn route(
        &self,
        room: &str,
        (seq, ts_ms): (u64, u64),
        frame: Arc<str>,
        online: &[OnlineSession],
        exclude_user: Option<&str>,
    ) -> usize {
        let live = self.live_for(room, online).await;
        let mut targets = 0;
        for (server_id, users) in group_by_server(online, exclude_user) {
            let delivery = Arc::new(Delivery {
                room: room.to_owned(),
                seq,
                users: users.into_iter().map(str::to_owned).collect(),
                frame: frame.clone(),
                ts_ms,
            });
            if let Some((own_id, hub)) = &self.local {
                if own_id == server_id {
                    hub.deliver(delivery);
                    targets += 1;
                    continue;
                }
            }
            match live.iter().find(|s| s.health.id == server_id) {
                Some(server) => {
                    self.links
                        .send(server_id, &server.health.internal_url, delivery);
                    targets += 1;
                }
                None => tracing::debug!(server_id, "session on a dead chat server: skipped"),
            }
        }
        targets
    }

    /// The live servers, read again if `online` names a server neither
    /// in the last registry read nor known to be missing. A server that
    /// started after that read must not be skipped, so if the read is too
    /// recent to repeat, this waits for it to age (at most
    /// [`REFRESH_MIN_AGE`], and only the first time a server is seen).
    async fn live_for(
        &self,
        room: &str,
        online: &[OnlineSession],
    ) -> Arc<Vec<chat_store::ServerSnapshot>> {
        let live = self.registry.live();
        let absent = |live: &[chat_store::ServerSnapshot], id: &str| {
            !self.is_local(id) && !live.iter().any(|s| s.health.id == id)
        };
        if !online.iter().any(|s| absent(&live, &s.server_id)) {
            return live;
        }
        let unexplained = {
            let missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
            online
                .iter()
                .any(|s| absent(&live, &s.server_id) && !missing.contains_key(&s.server_id))
        };
        let live = if unexplained {
            if !self.registry.refresh_if_older_than(REFRESH_MIN_AGE).await {
                tokio::time::sleep(REFRESH_MIN_AGE).await;
                self.registry.refresh_if_older_than(REFRESH_MIN_AGE).await;
            }
            self.registry.live()
        } else {
            live
        };
        if !self.registry.is_healthy() {
            return live;
        }
        let now = Instant::now();
        let mut forget = Vec::new();
        {
            let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
            missing.retain(|id, _| !live.iter().any(|s| &s.health.id == id));
            for entry in online.iter().filter(|s| absent(&live, &s.server_id)) {
                let since = note_missing(&mut missing, &entry.server_id, now);
                if now.duration_since(since) >= self.forget_missing_after {
                    forget.push((entry.session.clone(), entry.server_id.clone()));
                }
            }
        }
        if !forget.is_empty() {
            let store = self.store.clone();
            let registry = self.registry.clone();
            let room = room.to_owned();
            tokio::spawn(async move {
                // Forgetting is for good, so it is decided on a fresh read:
                // a server that came back since this router's last read keeps
                // its sessions.
                registry.refresh().await;
                if !registry.is_healthy() {
                    return;
                }
                let forget: Vec<String> = forget
                    .into_iter()
                    .filter(|(_, server_id)| !registry.is_live(server_id))
                    .map(|(session, _)| session)
                    .collect();
                if forget.is_empty() {
                    return;
                }
                if let Err(e) = store.forget_online(&room, &forget).await {
                    tracing::debug!(error = %e, room, "forgetting dead sessions failed");
                }
            });
        }
        live
    }

    fn is_local(&self, server_id: &str) -> bool {
        self.local.as_ref().is_some_and(|(own, _)| own == server_id)
    }

    /// Users among `users` with at least one session on a live chat server.
    pub async fn online(&self, users: &[String]) -> StoreResult<std::collections::HashSet<String>> {
        let sessions = self.store.sessions_of(users).await?;
        let live = self.registry.live();
        Ok(sessions
            .into_iter()
            .filter(|(_, locations)| {
                locations
                    .iter()
                    .any(|l| live.iter().any(|s| s.health.id == l.server_id))
            })
            .map(|(user, _)| user)
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::link::LinkConfig;
    use crate::registry::RegistryConfig;
    use chat_store::{MemoryStore, NewRoom, ServerHealth, ServerState, SessionLocation};

    fn health(id: &str) -> ServerHealth {
        ServerHealth {
            id: id.into(),
            url: format!("ws://127.0.0.1:1/{id}"),
            // Nothing listens there: the link keeps retrying in the
            // background, which these tests do not look at.
            internal_url: "ws://127.0.0.1:1/internal/link".into(),
            state: ServerState::Ready,
            connections: 0,
            load: 0.0,
            last_seen_ms: chat_protocol::now_ms(),
            tickets_in_own_slot: true,
            tracks_used_tickets: true,
        }
    }

    fn message(room: &str) -> Message {
        Message {
            room: room.into(),
            seq: 1,
            id: "m_1".into(),
            from: "alice".into(),
            body: "hi".into(),
            ts: 0,
            client_msg_id: None,
        }
    }

    /// The registry was read just before the server started: routing
    /// reads it again (waiting for the read to age) instead of skipping
    /// the server's sessions.
    #[tokio::test]
    async fn a_server_started_after_the_last_registry_read_is_routed_to() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let registry = ServerRegistry::new(store.clone(), RegistryConfig::default());
        registry.refresh().await;
        store.put_server(&health("late"), 60_000).await.unwrap();
        let router =
            MessageRouter::new(store, registry, LinkPool::new(LinkConfig::default()), None);
        let online = [entry("bob", "s1", "late")];
        assert_eq!(router.route_message(&message("r_1"), &online).await, 1);
    }

    /// Sessions of a server missing from the registry are skipped, and
    /// forgotten from the room's index once missing long enough; those of
    /// live servers stay.
    #[tokio::test]
    async fn sessions_of_a_server_missing_long_enough_are_forgotten() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        store
            .create_room(NewRoom {
                id: "r_1".into(),
                name: "room".into(),
                created_by: "alice".into(),
                created_at: 0,
                members: vec!["alice".into(), "bob".into()],
            })
            .await
            .unwrap();
        let at = |session: &str, server_id: &str| SessionLocation {
            session: session.into(),
            server_id: server_id.into(),
        };
        store
            .add_session("bob", &at("s1", "dead"), 60_000)
            .await
            .unwrap();
        store
            .add_session("alice", &at("s2", "live"), 60_000)
            .await
            .unwrap();
        store.put_server(&health("live"), 60_000).await.unwrap();
        let router = forgetful_router(&store).await;
        let online = store.room_online("r_1").await.unwrap();
        assert_eq!(online.len(), 2);
        assert_eq!(router.route_message(&message("r_1"), &online).await, 1);
        // The entries are dropped by a spawned task.
        for _ in 0..200 {
            if store.room_online("r_1").await.unwrap().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *store.room_online("r_1").await.unwrap(),
            [entry("alice", "s2", "live")]
        );
    }

    /// A user going offline in more rooms than presence reads may be in
    /// flight gets the event in every room: the reads wait their turn.
    #[tokio::test]
    async fn presence_in_more_rooms_than_reads_in_flight_reaches_every_room() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let rooms: Vec<String> = (0..PRESENCE_READS_IN_FLIGHT + 44)
            .map(|i| format!("r_{i}"))
            .collect();
        for room in &rooms {
            let members = vec!["alice".into(), "bob".into()];
            let new_room = NewRoom {
                id: room.clone(),
                name: "room".into(),
                created_by: "alice".into(),
                created_at: 0,
                members,
            };
            store.create_room(new_room).await.unwrap();
        }
        let bob = SessionLocation {
            session: "s1".into(),
            server_id: "live".into(),
        };
        store.add_session("bob", &bob, 60_000).await.unwrap();
        store.put_server(&health("live"), 60_000).await.unwrap();
        let registry = ServerRegistry::new(store.clone(), RegistryConfig::default());
        registry.refresh().await;
        let router =
            MessageRouter::new(store, registry, LinkPool::new(LinkConfig::default()), None);
        let offline = chat_store::PresenceChange {
            user: "alice".into(),
            online: false,
            ts: 1,
            rooms: rooms.clone(),
        };
        assert_eq!(
            router.announce_presence_to(&offline, &[]).await,
            rooms.len()
        );
        assert_eq!(
            router.presence_reads.available_permits(),
            PRESENCE_READS_IN_FLIGHT
        );
    }

    /// An absence long ago and a blip today are two absences: the blip is
    /// timed from its own start.
    #[test]
    fn a_new_absence_is_timed_from_its_own_start() {
        let mut missing = HashMap::new();
        let t0 = Instant::now();
        assert_eq!(note_missing(&mut missing, "s", t0), t0);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            note_missing(&mut missing, "s", t1),
            t0,
            "still the same absence"
        );
        let t2 = t1 + MISSING_EPISODE_GAP + Duration::from_millis(1);
        assert_eq!(note_missing(&mut missing, "s", t2), t2, "a new absence");
        assert_eq!(note_missing(&mut missing, "other", t2), t2);
    }

    /// A server that is back in the store by the time forgetting is
    /// decided keeps its sessions, even if this router's view missed it.
    #[tokio::test]
    async fn a_server_back_before_forgetting_keeps_its_sessions() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        store
            .create_room(NewRoom {
                id: "r_1".into(),
                name: "room".into(),
                created_by: "bob".into(),
                created_at: 0,
                members: vec!["bob".into()],
            })
            .await
            .unwrap();
        let location = SessionLocation {
            session: "s1".into(),
            server_id: "blip".into(),
        };
        store.add_session("bob", &location, 60_000).await.unwrap();
        let router = forgetful_router(&store).await; // "blip" is not listed: missing
                                                     // Known missing already, so routing does not read the registry
                                                     // again: its view stays the stale one.
        let now = Instant::now();
        router.missing.lock().unwrap().insert(
            "blip".into(),
            MissingSince {
                since: now,
                last_seen_missing: now,
            },
        );
        let online = store.room_online("r_1").await.unwrap();
        router.route_message(&message("r_1"), &online).await;
        // Back before the forgetting task (spawned, not yet run on this
        // single-threaded runtime) reads the registry.
        store.put_server(&health("blip"), 60_000).await.unwrap();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.room_online("r_1").await.unwrap().len(), 1);
    }

    /// A router over `store`, its registry read once, with no local hub.
    pub(crate) async fn router_on(store: &Arc<dyn Store>) -> MessageRouter {
        let registry = ServerRegistry::new(store.clone(), RegistryConfig::default());
        registry.refresh().await;
        MessageRouter::new(
            store.clone(),
            registry,
            LinkPool::new(LinkConfig::default()),
            None,
        )
    }

    /// A router over `store` with a fresh registry read, forgetting the
    /// sessions of missing servers at once.
    async fn forgetful_router(store: &Arc<dyn Store>) -> MessageRouter {
        router_on(store)
            .await
            .with_forget_missing_after(Duration::ZERO)
    }

    fn entry(user: &str, session: &str, server_id: &str) -> OnlineSession {
        OnlineSession {
            user: user.into(),
            session: session.into(),
            server_id: server_id.into(),
        }
    }

    #[test]
    fn grouping_names_each_user_once_per_server() {
        let online = [
            entry("bob", "s1", "A"),
            entry("alice", "s2", "A"),
            entry("bob", "s3", "A"),
            entry("bob", "s4", "B"),
            entry("carol", "s5", "B"),
        ];
        let groups = group_by_server(&online, None);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups["A"], vec!["alice", "bob"]);
        assert_eq!(groups["B"], vec!["bob", "carol"]);
    }

    #[test]
    fn grouping_leaves_out_the_excluded_user_and_empty_servers() {
        let online = [
            entry("alice", "s1", "A"),
            entry("bob", "s2", "B"),
            entry("alice", "s3", "B"),
        ];
        let groups = group_by_server(&online, Some("alice"));
        assert_eq!(groups.len(), 1);
        assert_eq!(groups["B"], vec!["bob"]);
        assert!(group_by_server(&[], None).is_empty());
    }
}
