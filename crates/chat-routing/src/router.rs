//! [`MessageRouter`]: from a stored message to the chat servers that need it.
//!
//! members(room) -> sessions of those members -> group users by live chat
//! server -> one [`Delivery`] per server, carrying the frame serialised once.
//! Membership is read per message, so a user added to a room receives its
//! next message without reconnecting and a removed one stops receiving.

use std::collections::HashMap;
use std::sync::Arc;

use chat_protocol::{Message, ServerFrame};
use chat_store::{Store, StoreResult};

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

    /// Delivers a stored message to every session of every member.
    pub async fn route_message(&self, message: &Message) -> StoreResult<usize> {
        let frame: Arc<str> = Arc::from(chat_protocol::frame::message_frame_json(message));
        self.route(&message.room, message.seq, frame, None).await
    }

    /// [`Self::route_message`], retried with back-off when the store is
    /// briefly unavailable (a failover, a timeout under load). A message
    /// that still cannot be routed reaches connected members when the
    /// room's next message reveals the gap, or through `resume`.
    pub async fn route_message_reliably(&self, message: &Message) {
        let mut delay = std::time::Duration::from_millis(50);
        for attempt in 1..=4 {
            match self.route_message(message).await {
                Ok(_) => return,
                Err(e) if attempt < 4 => {
                    tracing::debug!(error = %e, attempt, "routing failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                Err(e) => tracing::warn!(
                    error = %e, room = %message.room, seq = message.seq,
                    "routing failed; members recover through gap fill or resume"
                ),
            }
        }
    }

    /// Relays a typing notice to the room's other members.
    pub async fn route_typing(&self, room: &str, user: &str) -> StoreResult<usize> {
        let frame: Arc<str> = Arc::from(
            ServerFrame::Typing {
                room: room.to_owned(),
                user: user.to_owned(),
            }
            .to_json(),
        );
        self.route(room, 0, frame, Some(user)).await
    }

    /// Returns the number of chat servers the frame was handed to.
    async fn route(
        &self,
        room: &str,
        seq: u64,
        frame: Arc<str>,
        exclude_user: Option<&str>,
    ) -> StoreResult<usize> {
        let mut members = self.store.members(room).await?;
        if let Some(excluded) = exclude_user {
            members.retain(|m| m != excluded);
        }
        if members.is_empty() {
            return Ok(0);
        }
        let sessions = self.store.sessions_of(&members).await?;
        let mut live = self.registry.live();
        let unknown = sessions.values().flatten().any(|l| {
            !self.is_local(&l.server_id) && !live.iter().any(|s| s.health.id == l.server_id)
        });
        if unknown
            && self
                .registry
                .refresh_if_older_than(std::time::Duration::from_millis(100))
                .await
        {
            live = self.registry.live();
        }
        let mut by_server: HashMap<&str, Vec<String>> = HashMap::new();
        for (user, locations) in &sessions {
            for location in locations {
                let users = by_server.entry(location.server_id.as_str()).or_default();
                if users.last() != Some(user) {
                    users.push(user.clone());
                }
            }
        }
        let mut targets = 0;
        for (server_id, users) in by_server {
            let delivery = Arc::new(Delivery {
                room: room.to_owned(),
                seq,
                users,
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
        Ok(targets)
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
