//! [`MessageRouter`]: from a stored message to the chat servers that need it.
//!
//! The room's presence index (its members' live sessions, see
//! [`chat_store::OnlineSession`]) -> group users by live chat server -> one
//! [`Delivery`] per server, carrying the frame serialised once. The append
//! script returns the index with the seq it assigns, so a message costs no
//! read beyond its append: a member added to a room receives the room's
//! next message without reconnecting, and a removed one stops receiving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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

pub struct MessageRouter {
    store: Arc<dyn Store>,
    registry: Arc<ServerRegistry>,
    links: Arc<LinkPool>,
    local: Option<(String, Arc<dyn LocalDelivery>)>,
}

impl MessageRouter {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<ServerRegistry>,
        links: Arc<LinkPool>,
        local: Option<(String, Arc<dyn LocalDelivery>)>,
    ) -> Self {
        MessageRouter {
            store,
            registry,
            links,
            local,
        }
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
        self.route(&message.room, message.seq, frame, online, None)
            .await
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
        Ok(self.route(room, 0, frame, &online, Some(user)).await)
    }

    async fn route(
        &self,
        room: &str,
        seq: u64,
        frame: Arc<str>,
        online: &[OnlineSession],
        exclude_user: Option<&str>,
    ) -> usize {
        let mut live = self.registry.live();
        let is_known = |live: &[chat_store::ServerSnapshot], server_id: &str| {
            self.is_local(server_id) || live.iter().any(|s| s.health.id == server_id)
        };
        if online.iter().any(|s| !is_known(&live, &s.server_id))
            && self
                .registry
                .refresh_if_older_than(Duration::from_millis(100))
                .await
        {
            live = self.registry.live();
            self.forget_sessions_of_dead_servers(room, online, &live);
        }
        // One delivery per server, naming each user once (a user with two
        // sessions on one server is one recipient there).
        let mut by_server: HashMap<&str, Vec<&str>> = HashMap::new();
        for entry in online {
            if exclude_user != Some(entry.user.as_str()) {
                by_server
                    .entry(entry.server_id.as_str())
                    .or_default()
                    .push(entry.user.as_str());
            }
        }
        let mut targets = 0;
        for (server_id, mut users) in by_server {
            users.sort_unstable();
            users.dedup();
            let delivery = Arc::new(Delivery {
                room: room.to_owned(),
                seq,
                users: users.into_iter().map(str::to_owned).collect(),
                frame: frame.clone(),
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

    /// Index entries of servers missing from a registry read that just
    /// succeeded belong to servers that died without withdrawing them:
    /// forget them so that later messages skip the check.
    fn forget_sessions_of_dead_servers(
        &self,
        room: &str,
        online: &[OnlineSession],
        live: &[chat_store::ServerSnapshot],
    ) {
        if !self.registry.is_healthy() {
            return;
        }
        let dead: Vec<String> = online
            .iter()
            .filter(|s| !self.is_local(&s.server_id))
            .filter(|s| !live.iter().any(|l| l.health.id == s.server_id))
            .map(|s| s.session.clone())
            .collect();
        if dead.is_empty() {
            return;
        }
        let store = self.store.clone();
        let room = room.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.forget_online(&room, &dead).await {
                tracing::debug!(error = %e, room, "forgetting dead sessions failed");
            }
        });
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
