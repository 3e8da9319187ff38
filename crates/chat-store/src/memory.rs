//! The in-memory store of the local mode: one process, no Redis.
//!
//! All state sits behind one `std::sync::Mutex`. Every operation is a short
//! critical section with no `.await` inside, so a blocking mutex is both
//! correct and cheaper than an async one; it also makes each trait method
//! trivially atomic, which is what the Redis scripts achieve per slot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_protocol::rest::Room;
use chat_protocol::{now_ms, Message};

use crate::{
    Appended, MarkedRead, NewMessage, NewRoom, OnlineSession, PresenceChange, RoomServers,
    RoomView, RoomsRead, ServerHealth, ServerSnapshot, SessionAdded, SessionLocation, Store,
    StoreConfig, StoreError, StoreResult, WentOffline,
};

#[derive(Default)]
struct RoomState {
    name: String,
    created_by: String,
    created_at: u64,
    members: HashSet<String>,
    seq: u64,
    messages: BTreeMap<u64, Message>,
    /// `(from, client_msg_id)` -> (seq-independent copy of the message, expiry).
    dedup: HashMap<(String, String), (Message, u64)>,
    /// The presence index: session id -> entry.
    online: OnlineIndex,
    /// Read markers of members: user -> seq (absent means 0).
    reads: HashMap<String, u64>,
    /// Members added after creation: user -> the seq when they joined
    /// (absent means 0: a member the room was created with).
    joined: HashMap<String, u64>,
}

/// A room's presence index, and the list appends hand out, made once
/// per change rather than once per message.
#[derive(Default)]
struct OnlineIndex {
    by_session: HashMap<String, OnlineSession>,
    shared: Option<Arc<[OnlineSession]>>,
}

impl OnlineIndex {
    fn insert(&mut self, session: String, entry: OnlineSession) {
        self.shared = None;
        self.by_session.insert(session, entry);
    }

    fn remove(&mut self, session: &str) {
        if self.by_session.remove(session).is_some() {
            self.shared = None;
        }
    }

    fn remove_user(&mut self, user: &str) {
        self.shared = None;
        self.by_session.retain(|_, entry| entry.user != user);
    }

    fn shared(&mut self) -> Arc<[OnlineSession]> {
        self.shared
            .get_or_insert_with(|| self.by_session.values().cloned().collect())
            .clone()
    }
}

impl RoomState {
    fn online(&self) -> Vec<OnlineSession> {
        self.online.by_session.values().cloned().collect()
    }

    /// Indexes `user`'s sessions, if `user` is a member.
    fn announce(&mut self, user: &str, sessions: Option<&UserSessions>) {
        if !self.members.contains(user) {
            return;
        }
        for (session, server_id) in sessions.into_iter().flat_map(|s| &s.sessions) {
            self.online.insert(
                session.clone(),
                OnlineSession {
                    user: user.to_owned(),
                    session: session.clone(),
                    server_id: server_id.clone(),
                },
            );
        }
    }
}

#[derive(Default)]
struct UserSessions {
    sessions: HashMap<String, String>,
    expires_at_ms: u64,
}

impl UserSessions {
    fn is_live(&self, now: u64) -> bool {
        self.expires_at_ms > now && !self.sessions.is_empty()
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, RoomState>,
    user_rooms: HashMap<String, HashSet<String>>,
    servers: HashMap<String, (ServerHealth, u64)>,
    pending: HashMap<String, HashMap<String, u64>>,
    presence: HashMap<String, UserSessions>,
    registered: HashMap<String, String>,
    /// Registered server id -> since when it has had no health record.
    unseen: HashMap<String, u64>,
    /// Chat server id -> users with sessions there: what reaping reads
    /// when the server dies.
    hosted: HashMap<String, HashSet<String>>,
    /// Servers whose sessions a reaper took (`Store::take_reaped_mark`).
    reaped: HashSet<String>,
}

impl State {
    fn rooms_of(&self, user: &str) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .user_rooms
            .get(user)
            .into_iter()
            .flatten()
            .filter(|id| {
                self.rooms
                    .get(*id)
                    .is_some_and(|r| r.members.contains(user))
            })
            .cloned()
            .collect();
        rooms.sort();
        rooms
    }

    /// Drops `user`'s sessions on `server_id`; the offline transition if
    /// that left the user with none.
    fn reap_user(&mut self, user: &str, server_id: &str, now: u64) -> Option<PresenceChange> {
        let entry = self.presence.get_mut(user)?;
        let was_live = entry.is_live(now);
        let dropped: Vec<String> = entry
            .sessions
            .iter()
            .filter(|(_, server)| *server == server_id)
            .map(|(session, _)| session.clone())
            .collect();
        if dropped.is_empty() {
            return None;
        }
        entry.sessions.retain(|_, server| server != server_id);
        let sessions_left = !entry.sessions.is_empty();
        if !sessions_left {
            self.presence.remove(user);
        }
        // Routing stops sending to the dead server's sessions.
        for id in self.user_rooms.get(user).into_iter().flatten() {
            if let Some(r) = self.rooms.get_mut(id) {
                for session in &dropped {
                    r.online.remove(session);
                }
            }
        }
        (was_live && !sessions_left).then(|| PresenceChange {
            user: user.to_owned(),
            online: false,
            ts: now,
            rooms: self.rooms_of(user),
        })
    }

    /// `mark`: leave the mark a live server finds at its next report (not
    /// for a server reaping its own previous run).
    fn reap_server(&mut self, server_id: &str, now: u64, mark: bool) -> Vec<PresenceChange> {
        let users = self.hosted.remove(server_id).unwrap_or_default();
        if mark && !users.is_empty() {
            self.reaped.insert(server_id.to_owned());
        }
        let mut users: Vec<String> = users.into_iter().collect();
        users.sort();
        users
            .iter()
            .filter_map(|user| self.reap_user(user, server_id, now))
            .collect()
    }
}

pub struct MemoryStore {
    config: StoreConfig,
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new(config: StoreConfig) -> Self {
        MemoryStore {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write
        // (each method mutates after all checks), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(StoreConfig::default())
    }
}

/// The room as `viewer` sees it (read state of an empty viewer: 0).
fn room_view(id: &str, r: &RoomState, viewer: &str) -> Room {
    Room {
        id: id.to_owned(),
        name: r.name.clone(),
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        member_count: r.members.len() as u64,
        last_seq: 0,
        read_seq: 0,
        unread: 0,
    }
    .with_read_state(r.seq, r.reads.get(viewer).copied().unwrap_or(0))
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<Room> {
        let mut st = self.lock();
        let state = RoomState {
            name: room.name,
            created_by: room.created_by,
            created_at: room.created_at,
            members: room.members.iter().cloned().collect(),
            ..RoomState::default()
        };
        for m in &state.members {
            st.user_rooms
                .entry(m.clone())
                .or_default()
                .insert(room.id.clone());
        }
        let mut state = state;
        for m in room.members.iter() {
            state.announce(m, st.presence.get(m));
        }
        let view = room_view(&room.id, &state, "");
        st.rooms.insert(room.id, state);
        Ok(view)
    }

    async fn room_view(&self, room: &str, viewer: &str) -> StoreResult<Option<RoomView>> {
        Ok(self.lock().rooms.get(room).map(|r| RoomView {
            room: room_view(room, r, viewer),
            is_member: r.members.contains(viewer),
        }))
    }

    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains(user)))
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<String>> {
        let st = self.lock();
        let mut members: Vec<String> = st
            .rooms
            .get(room)
            .map(|r| r.members.iter().cloned().collect())
            .unwrap_or_default();
        members.sort();
        Ok(members)
    }

    async fn rooms_of_user(&self, user: &str) -> StoreResult<Vec<Room>> {
        let st = self.lock();
        let mut rooms: Vec<Room> = st
            .user_rooms
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| st.rooms.get(id).map(|r| (id, r)))
            .filter(|(_, r)| r.members.contains(user))
            .map(|(id, r)| room_view(id, r, user))
            .collect();
        rooms.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rooms)
    }

    async fn add_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        let mut st = self.lock();
        let st = &mut *st;
        let r = st
            .rooms
            .get_mut(room)
            .ok_or_else(|| StoreError::NoRoom(room.to_owned()))?;
        let added = r.members.insert(user.to_owned());
        if added {
            r.joined.insert(user.to_owned(), r.seq);
        }
        r.announce(user, st.presence.get(user));
        st.user_rooms
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
        Ok(added)
    }

    async fn joined_seq(&self, room: &str, user: &str) -> StoreResult<Option<u64>> {
        let st = self.lock();
        Ok(st
            .rooms
            .get(room)
            .filter(|r| r.members.contains(user))
            .map(|r| r.joined.get(user).copied().unwrap_or(0)))
    }

    async fn remove_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        let mut st = self.lock();
        let r = st
            .rooms
            .get_mut(room)
            .ok_or_else(|| StoreError::NoRoom(room.to_owned()))?;
        let removed = r.members.remove(user);
        r.online.remove_user(user);
        r.reads.remove(user);
        r.joined.remove(user);
        if let Some(set) = st.user_rooms.get_mut(user) {
            set.remove(room);
        }
        Ok(removed)
    }

    async fn mark_read(&self, room: &str, user: &str, seq: u64) -> StoreResult<MarkedRead> {
        let mut st = self.lock();
        let r = st
            .rooms
            .get_mut(room)
            .ok_or_else(|| StoreError::NoRoom(room.to_owned()))?;
        if !r.members.contains(user) {
            return Err(StoreError::NotMember {
                room: room.to_owned(),
                user: user.to_owned(),
            });
        }
        let wanted = seq.min(r.seq);
        let marker = r.reads.entry(user.to_owned()).or_insert(0);
        let moved = wanted > *marker;
        if moved {
            *marker = wanted;
        }
        Ok(MarkedRead {
            read_seq: *marker,
            moved,
            member_count: r.members.len() as u64,
            online: if moved { r.online() } else { Vec::new() },
        })
    }

    async fn reads(&self, room: &str) -> StoreResult<Vec<(String, u64)>> {
        let st = self.lock();
        let Some(r) = st.rooms.get(room) else {
            return Ok(Vec::new());
        };
        let mut reads: Vec<(String, u64)> = r
            .members
            .iter()
            .map(|u| (u.clone(), r.reads.get(u).copied().unwrap_or(0)))
            .collect();
        reads.sort();
        Ok(reads)
    }

    async fn append(&self, m: NewMessage) -> StoreResult<Appended> {
        let now = now_ms();
        let retention = self.config.history_retention;
        let dedup_ttl = self.config.dedup_ttl_ms;
        let mut st = self.lock();
        let r = st
            .rooms
            .get_mut(&m.room)
            .ok_or_else(|| StoreError::NoRoom(m.room.clone()))?;
        if m.from_member && !r.members.contains(&m.from) {
            return Err(StoreError::NotMember {
                room: m.room,
                user: m.from,
            });
        }
        let dedup_key = m.client_msg_id.clone().map(|c| (m.from.clone(), c));
        if let Some(key) = &dedup_key {
            if let Some((original, expires)) = r.dedup.get(key) {
                if *expires > now {
                    return Ok(Appended {
                        message: original.clone(),
                        duplicate: true,
                        online: r.online.shared(),
                    });
                }
            }
        }
        r.seq += 1;
        let message = Message {
            room: m.room,
            seq: r.seq,
            id: m.id,
            from: m.from,
            body: m.body,
            ts: m.ts,
            client_msg_id: m.client_msg_id,
        };
        r.messages.insert(message.seq, message.clone());
        if m.from_member {
            r.reads.insert(message.from.clone(), message.seq);
        }
        while r.messages.len() as u64 > retention {
            r.messages.pop_first();
        }
        if let Some(key) = dedup_key {
            r.dedup.retain(|_, (_, exp)| *exp > now);
            r.dedup.insert(key, (message.clone(), now + dedup_ttl));
        }
        Ok(Appended {
            message,
            duplicate: false,
            online: r.online.shared(),
        })
    }

    async fn messages_after(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let st = self.lock();
        Ok(st
            .rooms
            .get(room)
            .map(|r| {
                r.messages
                    .range(after.saturating_add(1)..)
                    .take(limit as usize)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn messages_before(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let st = self.lock();
        let mut out: Vec<Message> = st
            .rooms
            .get(room)
            .map(|r| {
                r.messages
                    .range(..before)
                    .rev()
                    .take(limit as usize)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.reverse();
        Ok(out)
    }

    async fn latest_seqs(&self, rooms: &[&str]) -> StoreResult<Vec<u64>> {
        let st = self.lock();
        Ok(rooms
            .iter()
            .map(|id| st.rooms.get(*id).map_or(0, |r| r.seq))
            .collect())
    }

    async fn put_server(&self, health: &ServerHealth, ttl_ms: u64) -> StoreResult<()> {
        self.lock()
            .servers
            .insert(health.id.clone(), (health.clone(), now_ms() + ttl_ms));
        Ok(())
    }

    async fn remove_server(&self, server_id: &str) -> StoreResult<()> {
        let mut st = self.lock();
        st.servers.remove(server_id);
        st.pending.remove(server_id);
        Ok(())
    }

    async fn servers(&self, now: u64) -> StoreResult<Vec<ServerSnapshot>> {
        let mut st = self.lock();
        let wall = now_ms();
        st.servers.retain(|_, (_, expires)| *expires > wall);
        let mut out: Vec<ServerSnapshot> = st
            .servers
            .values()
            .map(|(health, _)| ServerSnapshot {
                health: health.clone(),
                pending_tickets: st
                    .pending
                    .get(&health.id)
                    .map_or(0, |p| p.values().filter(|exp| **exp > now).count() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.health.id.cmp(&b.health.id));
        Ok(out)
    }

    async fn add_pending_ticket(
        &self,
        server: &ServerHealth,
        ticket_id: &str,
        expires_at_ms: u64,
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut st = self.lock();
        let pending = st.pending.entry(server.id.clone()).or_default();
        pending.retain(|_, exp| *exp > now);
        pending.insert(ticket_id.to_owned(), expires_at_ms);
        Ok(())
    }

    async fn take_pending_ticket(
        &self,
        server_id: &str,
        ticket_id: &str,
        now: u64,
    ) -> StoreResult<bool> {
        let mut st = self.lock();
        Ok(st
            .pending
            .get_mut(server_id)
            .and_then(|p| p.remove(ticket_id))
            .is_some_and(|exp| exp > now))
    }

    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> StoreResult<()> {
        let mut st = self.lock();
        st.registered.retain(|_, owner| owner != cluster);
        for id in server_ids {
            st.registered.insert(id.clone(), cluster.to_owned());
        }
        Ok(())
    }

    async fn registered(&self) -> StoreResult<HashSet<String>> {
        Ok(self.lock().registered.keys().cloned().collect())
    }

    async fn expire_registrations(&self, now: u64, unseen_for_ms: u64) -> StoreResult<Vec<String>> {
        let wall = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let mut expired = Vec::new();
        let ids: Vec<String> = st.registered.keys().cloned().collect();
        for id in ids {
            let alive = st
                .servers
                .get(&id)
                .is_some_and(|(_, expires)| *expires > wall);
            if alive {
                st.unseen.remove(&id);
                continue;
            }
            let since = *st.unseen.entry(id.clone()).or_insert(now);
            if now.saturating_sub(since) >= unseen_for_ms {
                st.registered.remove(&id);
                st.unseen.remove(&id);
                expired.push(id);
            }
        }
        st.unseen.retain(|id, _| st.registered.contains_key(id));
        Ok(expired)
    }

    async fn add_session(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
    ) -> StoreResult<SessionAdded> {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let entry = st.presence.entry(user.to_owned()).or_default();
        if !entry.is_live(now) {
            entry.sessions.clear();
        }
        let first = entry.sessions.is_empty();
        entry
            .sessions
            .insert(location.session.clone(), location.server_id.clone());
        entry.expires_at_ms = now + ttl_ms;
        st.hosted
            .entry(location.server_id.clone())
            .or_default()
            .insert(user.to_owned());
        let mut rooms = Vec::new();
        for id in st.user_rooms.get(user).into_iter().flatten() {
            let Some(r) = st.rooms.get_mut(id) else {
                continue;
            };
            if r.members.contains(user) {
                r.online.insert(
                    location.session.clone(),
                    OnlineSession {
                        user: user.to_owned(),
                        session: location.session.clone(),
                        server_id: location.server_id.clone(),
                    },
                );
                rooms.push((id.clone(), r.seq));
            }
        }
        rooms.sort();
        let came_online = first.then(|| PresenceChange {
            user: user.to_owned(),
            online: true,
            ts: now,
            rooms: rooms.iter().map(|(room, _)| room.clone()).collect(),
        });
        let sessions = entry
            .sessions
            .iter()
            .map(|(session, server_id)| SessionLocation {
                session: session.clone(),
                server_id: server_id.clone(),
            })
            .collect();
        Ok(SessionAdded {
            rooms,
            came_online,
            sessions,
            presence_audiences: Vec::new(),
        })
    }

    async fn remove_session(
        &self,
        user: &str,
        session: &str,
    ) -> StoreResult<Option<PresenceChange>> {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        for id in st.user_rooms.get(user).into_iter().flatten() {
            if let Some(r) = st.rooms.get_mut(id) {
                r.online.remove(session);
            }
        }
        let Some(entry) = st.presence.get_mut(user) else {
            return Ok(None);
        };
        let was_live = entry.is_live(now);
        let Some(server_id) = entry.sessions.remove(session) else {
            return Ok(None);
        };
        let left = entry.sessions.len();
        let still_hosted = entry.sessions.values().any(|s| *s == server_id);
        if left == 0 {
            st.presence.remove(user);
        }
        if !still_hosted {
            if let Some(users) = st.hosted.get_mut(&server_id) {
                users.remove(user);
            }
        }
        Ok((was_live && left == 0).then(|| PresenceChange {
            user: user.to_owned(),
            online: false,
            ts: now,
            rooms: st.rooms_of(user),
        }))
    }

    async fn reap_dead_servers(&self, _presence_max_members: u64) -> StoreResult<Vec<WentOffline>> {
        let now = now_ms();
        let mut st = self.lock();
        let mut dead: Vec<String> = st
            .hosted
            .keys()
            .filter(|id| {
                st.servers
                    .get(*id)
                    .is_none_or(|(_, expires)| *expires <= now)
            })
            .cloned()
            .collect();
        dead.sort();
        Ok(dead
            .iter()
            .flat_map(|id| st.reap_server(id, now, true))
            .map(WentOffline::unread)
            .collect())
    }

    async fn reap_silent_server(
        &self,
        server_id: &str,
        last_seen_ms: u64,
        _presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>> {
        let mut st = self.lock();
        let reported_since = st
            .servers
            .get(server_id)
            .is_some_and(|(health, _)| health.last_seen_ms > last_seen_ms);
        if reported_since {
            return Ok(Vec::new());
        }
        let reaped = st.reap_server(server_id, now_ms(), true);
        Ok(reaped.into_iter().map(WentOffline::unread).collect())
    }

    async fn take_reaped_mark(&self, server_id: &str) -> StoreResult<bool> {
        Ok(self.lock().reaped.remove(server_id))
    }

    async fn reap_server(
        &self,
        server_id: &str,
        _presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>> {
        let reaped = self.lock().reap_server(server_id, now_ms(), false);
        Ok(reaped.into_iter().map(WentOffline::unread).collect())
    }

    async fn presence_audience(
        &self,
        room: &str,
        max_members: u64,
    ) -> StoreResult<Option<Vec<OnlineSession>>> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .filter(|r| r.members.len() as u64 <= max_members)
            .map(RoomState::online))
    }

    async fn room_online(&self, room: &str) -> StoreResult<Arc<[OnlineSession]>> {
        Ok(self
            .lock()
            .rooms
            .get_mut(room)
            .map(|r| r.online.shared())
            .unwrap_or_else(|| Arc::new([])))
    }

    async fn forget_online(&self, room: &str, sessions: &[String]) -> StoreResult<()> {
        if let Some(r) = self.lock().rooms.get_mut(room) {
            for session in sessions {
                r.online.remove(session);
            }
        }
        Ok(())
    }

    async fn refresh_sessions(&self, users: &[String], ttl_ms: u64) -> StoreResult<()> {
        let expires = now_ms() + ttl_ms;
        let mut st = self.lock();
        for user in users {
            if let Some(entry) = st.presence.get_mut(user) {
                entry.expires_at_ms = expires;
            }
        }
        Ok(())
    }

    async fn sessions_of(
        &self,
        users: &[String],
    ) -> StoreResult<HashMap<String, Vec<SessionLocation>>> {
        let now = now_ms();
        let st = self.lock();
        Ok(users
            .iter()
            .filter_map(|user| {
                let entry = st.presence.get(user)?;
                if entry.expires_at_ms <= now || entry.sessions.is_empty() {
                    return None;
                }
                let locations = entry
                    .sessions
                    .iter()
                    .map(|(session, server)| SessionLocation {
                        session: session.clone(),
                        server_id: server.clone(),
                    })
                    .collect();
                Some((user.clone(), locations))
            })
            .collect())
    }

    async fn room_servers_of_user(
        &self,
        user: &str,
        read: RoomsRead,
    ) -> StoreResult<Vec<RoomServers>> {
        // A map's order is arbitrary: a room's first sessions are a sample.
        let sample = usize::try_from(read.sessions).unwrap_or(usize::MAX);
        let st = self.lock();
        let rooms = st.user_rooms.get(user).into_iter().flatten();
        Ok(rooms
            .take(read.rooms)
            .filter_map(|id| {
                let online = &st.rooms.get(id)?.online.by_session;
                if online.len() as u64 > read.max_sessions {
                    return None;
                }
                let mut servers: Vec<String> = online
                    .values()
                    .take(sample)
                    .map(|s| s.server_id.clone())
                    .collect();
                servers.sort_unstable();
                servers.dedup();
                Some(RoomServers {
                    room: id.clone(),
                    servers,
                })
            })
            .collect())
    }
}
