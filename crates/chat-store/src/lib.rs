//! The shared state of the chat service behind one [`Store`] trait.
//!
//! Two implementations: [`RedisStore`] on a Redis Cluster (production, any
//! number of API and chat servers) and [`MemoryStore`] (the embedded local
//! mode, one process). Both pass the same behaviour suite in
//! [`conformance`], which is the real specification of the trait.
//!
//! The Redis key layout is written down once, in [`keys`].

mod args;
pub mod conformance;
mod group_commit;
pub use group_commit::{GroupCommitStats, GROUP_COMMIT_COUNTERS};
pub use online_cache::{PresenceIndexStats, PRESENCE_INDEX_COUNTERS};
pub mod keys;
pub use args::StoreArgs;
mod memory;
mod online_cache;
mod redis_store;
mod slot_owners;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chat_protocol::rest::Room;
use chat_protocol::Message;
use serde::{Deserialize, Serialize};

pub use chat_protocol::rest::ServerState;
pub use memory::MemoryStore;
pub use redis::ClientTlsConfig;
pub use redis_store::{RedisAccess, RedisStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("room {0} does not exist")]
    NoRoom(String),
    #[error("{user} is not a member of room {room}")]
    NotMember { room: String, user: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Tunables of a store, with units in their names.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Messages kept per room; older ones are trimmed on append.
    pub history_retention: u64,
    /// How long a `client_msg_id` is remembered for deduplication.
    pub dedup_ttl_ms: u64,
    /// Replicas that must confirm an appended message before it counts as
    /// stored (Redis `WAIT`); 0 trusts the master alone.
    pub min_replica_acks: u32,
    /// How long an append waits for those confirmations.
    pub replica_ack_timeout_ms: u64,
    /// Redis only: appends bound for one master while another batch is
    /// out go together, with one `WAIT` (see `group_commit`).
    pub group_commit: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_retention: 10_000,
            dedup_ttl_ms: 24 * 60 * 60 * 1000,
            min_replica_acks: 0,
            replica_ack_timeout_ms: 500,
            group_commit: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewRoom {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: u64,
    /// Every member including the creator, deduplicated by the store.
    pub members: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: String,
    pub id: String,
    pub from: String,
    pub body: String,
    pub ts: u64,
    pub client_msg_id: Option<String>,
    /// Whether `from` must be a member (and so has a read marker that the
    /// message moves). False only for a service publishing as itself.
    pub from_member: bool,
}

/// A room seen by one viewer: the room with the viewer's read state, and
/// whether the viewer is a member. One atomic read of the room's slot.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomView {
    pub room: Room,
    pub is_member: bool,
}

/// The result of [`Store::mark_read`]: the marker after the call, whether
/// it moved, and, when it moved, what routing the `read` frame needs (read
/// in the same atomic step): the member count, which decides between read
/// receipts for everyone and the reader's own sessions, and the presence
/// index.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkedRead {
    pub read_seq: u64,
    pub moved: bool,
    pub member_count: u64,
    pub online: Vec<OnlineSession>,
}

/// A presence transition decided by the store in one atomic step on the
/// user's keys: exactly one caller sees each transition, whichever process
/// it runs in. `rooms` are the user's rooms, where it is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: String,
    pub online: bool,
    /// When the store decided it, in ms since the epoch (one clock per user
    /// for Redis, the master's), so clients can order a user's events.
    pub ts: u64,
    pub rooms: Vec<String>,
}

/// What [`Store::add_session`] did: the user's rooms with their latest seq
/// (read atomically with the announcement), and the presence transition if
/// this was the user's first live session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionAdded {
    pub rooms: Vec<(String, u64)>,
    pub came_online: Option<PresenceChange>,
    /// The user's live sessions with this one added, read in the same
    /// step: what a chat server's share of the user's send limit follows,
    /// without another read per connect.
    pub sessions: Vec<SessionLocation>,
    /// Filled by [`Store::add_session_announced`] when the user came
    /// online, by stores that read them in the same step: each room's
    /// presence audience, as [`Store::presence_audience`] answers it
    /// (`None`: the room is too big for presence events). Rooms missing
    /// here are read by whoever announces. Sorted by room.
    pub presence_audiences: Vec<(String, Option<Vec<OnlineSession>>)>,
}

/// A user who went offline ([`Store::remove_session_announced`] when the
/// last session closed, the reaping of a dead server): the "offline"
/// transition and, from stores that read them in the same step as the
/// sessions leave each room's index, the rooms' presence audiences as [`Store::presence_audience`] answers them
/// (`None`: the room is too big for presence events). Rooms missing here
/// are read by whoever announces. Sorted by room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentOffline {
    pub change: PresenceChange,
    pub presence_audiences: Vec<(String, Option<Vec<OnlineSession>>)>,
}

impl WentOffline {
    /// The transition without audiences: the announcer reads them all.
    pub fn unread(change: PresenceChange) -> Self {
        WentOffline {
            change,
            presence_audiences: Vec::new(),
        }
    }
}

/// The result of an append: the stored message, whether it was already
/// stored under the same `(from, client_msg_id)` (then nothing was written),
/// and the room's online sessions read in the same atomic step, so that the
/// message can be routed without another round trip.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
    /// Shared: a store may hand the same index to many appends while it
    /// does not change (a big room's holds thousands of sessions).
    pub online: Arc<[OnlineSession]>,
}

/// An entry of a room's presence index: a live session of a member.
///
/// The index is kept next to the member set (one hash slot), so the append
/// that assigns a seq reads exactly the sessions that must receive it. Its
/// invariant: every entry belongs to a current member. Announcing checks
/// membership atomically, and removing a member withdraws their entries in
/// the same step. Entries of a chat server that died without withdrawing
/// them stay until a router notices the server is gone and forgets them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OnlineSession {
    pub user: String,
    pub session: String,
    pub server_id: String,
}

/// How much of a user's rooms placement reads
/// ([`Store::room_servers_of_user`]): the read is on every connect's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomsRead {
    /// At most this many of the user's rooms (which ones, when there are
    /// more, is the store's choice).
    pub rooms: usize,
    /// A room whose presence index holds more sessions than this is left
    /// out: it spans every server anyway.
    pub max_sessions: u64,
    /// Of a room's sessions, the servers of at most this many (a sample
    /// when there are more): enough to see where most of them are.
    pub sessions: u64,
}

/// Where a room's online members are, as placement reads it
/// ([`Store::room_servers_of_user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomServers {
    pub room: String,
    /// The chat servers holding the room's live sessions, each once, in no
    /// particular order; empty when none is online.
    pub servers: Vec<String>,
}

/// A chat server's self-reported health, as kept in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub id: String,
    /// Public WebSocket URL handed to clients.
    pub url: String,
    /// Base URL other processes use for the internal delivery link.
    pub internal_url: String,
    pub state: ServerState,
    pub connections: u64,
    /// Load figure in 0..=1 (connections over capacity, or CPU), for placement.
    pub load: f64,
    pub last_seen_ms: u64,
    /// Takes its tickets from its own hash slot (`keys::server_pending`),
    /// so that connects spread over the cluster's masters. Absent (false)
    /// in the health of servers from before that: API servers then write
    /// their tickets where those servers look, in the registry's slot.
    #[serde(default)]
    pub tickets_in_own_slot: bool,
    /// Enforces its tickets' single use itself, in memory, for tickets that
    /// say when they were issued (`issued_at_ms`): API servers then mint
    /// such tickets and write no pending entry to the store, which takes a
    /// connect two round trips fewer. Absent (false) in the health of
    /// servers from before that, which take every ticket from the store.
    #[serde(default)]
    pub tracks_used_tickets: bool,
}

/// A registry entry plus the tickets handed out for it that have not been
/// used yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnapshot {
    pub health: ServerHealth,
    pub pending_tickets: u64,
}

/// One live WebSocket session of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionLocation {
    pub session: String,
    pub server_id: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Round trip to the backing store, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// What group commit of appends did so far (Redis only; `None` when
    /// it is off or does not apply).
    fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        None
    }

    /// How appends came by rooms' presence indexes so far (Redis only:
    /// `None` where the index is never sent).
    fn presence_index_stats(&self) -> Option<PresenceIndexStats> {
        None
    }

    // Rooms and membership. The room's member set is authoritative; the
    // per-user room index is derived from it and repaired on read.
    async fn create_room(&self, room: NewRoom) -> StoreResult<Room>;
    /// The room with `viewer`'s read state (none for an empty viewer) and
    /// whether `viewer` is a member; `None` if there is no such room.
    async fn room_view(&self, room: &str, viewer: &str) -> StoreResult<Option<RoomView>>;
    async fn room(&self, room: &str) -> StoreResult<Option<Room>> {
        Ok(self.room_view(room, "").await?.map(|v| v.room))
    }
    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool>;
    async fn members(&self, room: &str) -> StoreResult<Vec<String>>;
    /// The user's rooms, each with the user's read state. Costs one round
    /// trip per store node, not one per room (requests are pipelined).
    async fn rooms_of_user(&self, user: &str) -> StoreResult<Vec<Room>>;
    /// Adds a member; `Ok(false)` if already a member. `NoRoom` if none.
    /// The member's live sessions are announced in the room (as are those
    /// of the members of a new room).
    async fn add_member(&self, room: &str, user: &str) -> StoreResult<bool>;
    /// The room's latest seq when `user` became a member: every later
    /// message is theirs (0 for the members a room was created with).
    /// `None` if `user` is not a member, or joined a room created before
    /// joins were recorded. A session that first sees a room through a
    /// delivery starts there, so an earlier message arriving later over
    /// another link is not taken for a duplicate (issue 12).
    async fn joined_seq(&self, room: &str, user: &str) -> StoreResult<Option<u64>>;
    /// Removes a member; `Ok(false)` if not a member. `NoRoom` if none.
    /// Their sessions leave the room's presence index, and their read
    /// marker is dropped, in the same step.
    async fn remove_member(&self, room: &str, user: &str) -> StoreResult<bool>;

    // Read state (contract v1.1). Markers live in the room's slot.
    /// Atomically: check the room and membership, then move `user`'s
    /// marker to `min(seq, latest seq)` if that is higher than it is.
    async fn mark_read(&self, room: &str, user: &str, seq: u64) -> StoreResult<MarkedRead>;
    /// Every member's marker (0 if none), sorted by user. Empty for an
    /// unknown room.
    async fn reads(&self, room: &str) -> StoreResult<Vec<(String, u64)>>;

    // Messages.
    /// Atomically: check the room exists and `from` is a member (unless
    /// `from_member` is false), dedup by `(from, client_msg_id)`, assign the
    /// next seq, store, trim history, and move the sender's read marker to
    /// the new seq.
    async fn append(&self, message: NewMessage) -> StoreResult<Appended>;
    /// Up to `limit` messages with `seq > after`, ascending.
    async fn messages_after(&self, room: &str, after: u64, limit: u32)
        -> StoreResult<Vec<Message>>;
    /// The `limit` messages just below `before`, ascending.
    async fn messages_before(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>>;
    /// The latest seq of each room (0 for an empty or unknown room), in the
    /// order asked.
    async fn latest_seqs(&self, rooms: &[&str]) -> StoreResult<Vec<u64>>;

    // Chat server registry.
    /// Writes a server's health; it disappears after `ttl_ms` without refresh.
    async fn put_server(&self, health: &ServerHealth, ttl_ms: u64) -> StoreResult<()>;
    async fn remove_server(&self, server_id: &str) -> StoreResult<()>;
    /// Unexpired servers with their pending ticket counts at `now_ms`.
    async fn servers(&self, now_ms: u64) -> StoreResult<Vec<ServerSnapshot>>;
    /// Records a ticket handed out for `server` (where its health says it
    /// takes them).
    async fn add_pending_ticket(
        &self,
        server: &ServerHealth,
        ticket_id: &str,
        expires_at_ms: u64,
    ) -> StoreResult<()>;
    /// Consumes a pending ticket: `true` exactly once per unexpired ticket,
    /// wherever an API server of this or the previous release wrote it.
    async fn take_pending_ticket(
        &self,
        server_id: &str,
        ticket_id: &str,
        now_ms: u64,
    ) -> StoreResult<bool>;

    // Endpoint registration (Kubernetes mode): the operator records which
    // chat servers belong to a ChatCluster; API servers started with
    // `--require-registration` place clients only on registered servers.
    /// Replaces the registered servers of `cluster` with `server_ids`.
    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> StoreResult<()>;
    /// Every registered server id, over all clusters.
    async fn registered(&self) -> StoreResult<std::collections::HashSet<String>>;
    /// Expires registrations whose server has had no health record for
    /// `unseen_for_ms` (as of `now_ms`): a ChatCluster deleted while no
    /// operator ran leaves entries behind. Never a live server's: placement
    /// must not depend on the operator running, and the operator registers
    /// its ready pods again on every reconcile. Returns the expired ids.
    async fn expire_registrations(
        &self,
        now_ms: u64,
        unseen_for_ms: u64,
    ) -> StoreResult<Vec<String>>;

    // Presence: where each user's sessions are, per user (expiring unless
    // refreshed) and per room (the index routing reads).
    /// Records the session and announces it in every room the user is a
    /// member of. Returns those rooms with their latest seq, each read
    /// atomically with the announcement: every message with a higher seq
    /// is routed to this session.
    ///
    /// A membership added concurrently is not missed: `add_member` writes
    /// the member before reading the user's sessions, and this writes the
    /// session before reading the user's rooms, so at least one of the two
    /// sees the other and announces the session.
    ///
    /// The user "comes online" when this is their first live session: the
    /// store decides that in the same step as it records the session.
    async fn add_session(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
    ) -> StoreResult<SessionAdded>;
    /// [`Store::add_session`], and, when the user came online, each room's
    /// presence audience for rooms of at most `presence_max_members`
    /// members (in `presence_audiences`), read in the same step as the
    /// session joins the room's index: announcing the user then costs no
    /// read per room. A store may leave them out (this default does);
    /// the announcer reads what is missing.
    async fn add_session_announced(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
        presence_max_members: u64,
    ) -> StoreResult<SessionAdded> {
        let _ = presence_max_members;
        self.add_session(user, location, ttl_ms).await
    }
    /// Removes the session and withdraws it from its rooms' indexes.
    /// Returns the "offline" transition when it was the user's last.
    async fn remove_session(
        &self,
        user: &str,
        session: &str,
    ) -> StoreResult<Option<PresenceChange>>;
    /// [`Store::remove_session`], and, when the user went offline, each
    /// room's presence audience for rooms of at most
    /// `presence_max_members` members, read in the same step as the
    /// session leaves the room's index: announcing the user then costs no
    /// read per room (a close storm's reads would otherwise queue behind
    /// its own index writes). A store may leave them out (this default
    /// does); the announcer reads what is missing.
    async fn remove_session_announced(
        &self,
        user: &str,
        session: &str,
        presence_max_members: u64,
    ) -> StoreResult<Option<WentOffline>> {
        let _ = presence_max_members;
        Ok(self
            .remove_session(user, session)
            .await?
            .map(WentOffline::unread))
    }
    /// Removes the sessions of every chat server that hosted sessions and
    /// has no unexpired health record any more (it died, or is cut off):
    /// returns the users that went offline through it. Safe to run from
    /// every process at once: each transition is returned exactly once.
    /// As with [`Store::remove_session_announced`], a store may read each
    /// room's presence audience (rooms of at most `presence_max_members`)
    /// in the step that takes the sessions out of its index, leaving out
    /// the reaped server's own sessions.
    async fn reap_dead_servers(&self, presence_max_members: u64) -> StoreResult<Vec<WentOffline>>;
    /// Reaps one server before its health record expires when it has not
    /// reported since `last_seen_ms` (its record is gone, or its last
    /// report is that one or older): a process that found the server's
    /// port refusing connections after its link closed and its reports
    /// stopped need not wait out the rest of the dead-after interval. A
    /// server that reported since is left alone. As
    /// [`Store::reap_dead_servers`] otherwise (each transition once; the
    /// server stays listed for the reaper until its record expires).
    async fn reap_silent_server(
        &self,
        server_id: &str,
        last_seen_ms: u64,
        presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>>;
    /// Whether a reaper took sessions of `server_id` since the last call
    /// (and forgets it): [`Store::reap_dead_servers`] and
    /// [`Store::reap_silent_server`] mark a server before they drop any of
    /// its sessions and again after their last write to the rooms'
    /// presence indexes. A live server that was reaped all the
    /// same (its reports were late; a firewall that rejects rather than
    /// drops made its port look dead) asks at every health report and then
    /// announces its sessions again, so no reap, however late it lands,
    /// leaves its sessions out for good.
    async fn take_reaped_mark(&self, server_id: &str) -> StoreResult<bool>;
    /// The same for one server regardless of its health: a chat server
    /// reaps the sessions its previous incarnation (same id) left behind.
    /// Leaves no mark (the server reaps itself).
    async fn reap_server(
        &self,
        server_id: &str,
        presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>>;
    /// Who should see a presence event in `room`: its presence index, or
    /// `None` when the room has more than `max_members` members.
    async fn presence_audience(
        &self,
        room: &str,
        max_members: u64,
    ) -> StoreResult<Option<Vec<OnlineSession>>>;
    /// The room's presence index (empty for an unknown room). Shared, as
    /// an append's: a store may hand out the list it holds while the index
    /// is unchanged.
    async fn room_online(&self, room: &str) -> StoreResult<Arc<[OnlineSession]>>;
    /// Drops index entries, e.g. those of a chat server that died.
    async fn forget_online(&self, room: &str, sessions: &[String]) -> StoreResult<()>;
    /// Extends the lifetime of these users' presence records.
    async fn refresh_sessions(&self, users: &[String], ttl_ms: u64) -> StoreResult<()>;
    /// Sessions of each given user (users without sessions are omitted).
    async fn sessions_of(
        &self,
        users: &[String],
    ) -> StoreResult<HashMap<String, Vec<SessionLocation>>>;
    /// Placement's read: for some of `user`'s rooms, the chat servers
    /// their online members are on, read from the presence indexes within
    /// the bounds of `read`.
    async fn room_servers_of_user(
        &self,
        user: &str,
        read: RoomsRead,
    ) -> StoreResult<Vec<RoomServers>>;
}

/// The message record as stored: the contract's JSON.
pub(crate) fn decode_message(raw: &str) -> StoreResult<Message> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("message: {e}")))
}
