//! [`ServerRegistry`]: this process's view of the live chat servers.
//!
//! Every chat server writes its health to the store each second. Placement
//! and routing read a snapshot refreshed in the background (every
//! `refresh_interval_ms`), so `/v1/connect` and message routing never wait
//! on a registry read. A server silent for longer than `dead_after_ms` is
//! dead: never placed, never routed to.
//!
//! Tickets this process handed out are counted locally on top of what the
//! snapshot says, so a burst of connects from one API server spreads evenly
//! even between two refreshes. For a server that tracks used tickets itself
//! (no pending entries in the store) a ticket counts until the server's
//! health is newer than the ticket: that report counts its session, if
//! it opened. For one from before, the store's pending count covers every
//! unused ticket, so local tickets count until the next refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chat_protocol::now_ms;
use chat_store::{ServerSnapshot, Store};

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub refresh_interval_ms: u64,
    pub dead_after_ms: u64,
    /// Kubernetes mode: only servers the operator registered count as live,
    /// so a stray process sending heartbeats never receives clients.
    pub require_registration: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            refresh_interval_ms: 250,
            dead_after_ms: 3000,
            require_registration: false,
        }
    }
}

pub struct ServerRegistry {
    store: Arc<dyn Store>,
    config: RegistryConfig,
    snapshot: RwLock<Arc<Vec<ServerSnapshot>>>,
    /// When this process issued the tickets the snapshot does not count
    /// yet (ms since the epoch), by server.
    issued: Mutex<HashMap<String, Vec<u64>>>,
    healthy: std::sync::atomic::AtomicBool,
    last_refresh: Mutex<Option<std::time::Instant>>,
    /// When the snapshot was read (ms since the epoch).
    snapshot_ms: std::sync::atomic::AtomicU64,
}

impl ServerRegistry {
    pub fn new(store: Arc<dyn Store>, config: RegistryConfig) -> Arc<Self> {
        Arc::new(ServerRegistry {
            store,
            config,
            snapshot: RwLock::new(Arc::new(Vec::new())),
            issued: Mutex::new(HashMap::new()),
            healthy: std::sync::atomic::AtomicBool::new(false),
            last_refresh: Mutex::new(None),
            snapshot_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Starts the background refresh; it ends when the registry is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = Duration::from_millis(self.config.refresh_interval_ms.max(10));
        tokio::spawn(async move {
            loop {
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.refresh().await;
                drop(registry);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Refreshes now unless the snapshot is younger than `min_age`. Routing
    /// calls this when a session points at a server it does not know: the
    /// server may have started since the last refresh. The age bound keeps
    /// sessions left behind by a dead server from costing a read per message.
    pub async fn refresh_if_older_than(&self, min_age: Duration) -> bool {
        let stale = self
            .last_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= min_age);
        if stale {
            self.refresh().await;
        }
        stale
    }

    /// Reads the store now. Called by the background task, and by tests.
    pub async fn refresh(&self) {
        *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
        let now = now_ms();
        let registered = if self.config.require_registration {
            match self.store.registered().await {
                Ok(set) => Some(set),
                Err(e) => {
                    self.healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "registration read failed");
                    return;
                }
            }
        } else {
            None
        };
        match self.store.servers(now).await {
            Ok(servers) => {
                let live: Vec<ServerSnapshot> = servers
                    .into_iter()
                    .filter(|s| {
                        now.saturating_sub(s.health.last_seen_ms) <= self.config.dead_after_ms
                    })
                    .filter(|s| registered.as_ref().is_none_or(|r| r.contains(&s.health.id)))
                    .collect();
                {
                    let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
                    let mut still_counted = HashMap::new();
                    for s in live.iter().filter(|s| s.health.tracks_used_tickets) {
                        if let Some(mut times) = issued.remove(&s.health.id) {
                            times.retain(|&t| t > s.health.last_seen_ms);
                            if !times.is_empty() {
                                still_counted.insert(s.health.id.clone(), times);
                            }
                        }
                    }
                    *issued = still_counted;
                }
                *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
                self.snapshot_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                self.healthy
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                self.healthy
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "registry refresh failed");
            }
        }
    }

    /// Whether the last refresh reached the store.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The live servers (silent ones already removed) as of the last refresh.
    pub fn live(&self) -> Arc<Vec<ServerSnapshot>> {
        self.live_at(now_ms())
    }

    /// [`Self::live`] at time `now` (ms since the epoch). Between refreshes
    /// a server can cross its dead-after line, so ages count up to `now`,
    /// but only while refreshes succeed: a failed refresh is no evidence
    /// that anyone died (it is this process, or the one slot holding the
    /// registry, that cannot reach the store), so then the last snapshot is
    /// kept as it was read, and routing and placement go on with it.
    fn live_at(&self, now: u64) -> Arc<Vec<ServerSnapshot>> {
        let snapshot = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = if self.is_healthy() {
            now
        } else {
            now.min(self.snapshot_ms.load(std::sync::atomic::Ordering::Relaxed))
        };
        if snapshot
            .iter()
            .all(|s| now.saturating_sub(s.health.last_seen_ms) <= self.config.dead_after_ms)
        {
            return snapshot;
        }
        Arc::new(
            snapshot
                .iter()
                .filter(|s| now.saturating_sub(s.health.last_seen_ms) <= self.config.dead_after_ms)
                .cloned()
                .collect(),
        )
    }

    pub fn is_live(&self, server_id: &str) -> bool {
        self.live().iter().any(|s| s.health.id == server_id)
    }

    /// Live servers with this process's recently issued tickets added to
    /// their pending counts, for placement.
    pub fn live_with_local_pending(&self) -> Vec<ServerSnapshot> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        self.live()
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.pending_tickets += issued.get(&s.health.id).map_or(0, |t| t.len() as u64);
                s
            })
            .collect()
    }

    /// Counts a ticket issued at `now_ms` for placement (see the module
    /// comment for how long).
    pub fn note_ticket_issued(&self, server_id: &str, now_ms: u64) {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server_id.to_owned())
            .or_default()
            .push(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_store::{MemoryStore, ServerHealth, ServerState};

    fn health(id: &str, last_seen_ms: u64) -> ServerHealth {
        ServerHealth {
            id: id.into(),
            url: format!("ws://{id}/ws"),
            internal_url: format!("ws://{id}/internal/link"),
            state: ServerState::Ready,
            connections: 0,
            load: 0.0,
            last_seen_ms,
            tickets_in_own_slot: true,
            tracks_used_tickets: true,
        }
    }

    fn pending(registry: &ServerRegistry) -> HashMap<String, u64> {
        registry
            .live_with_local_pending()
            .into_iter()
            .map(|s| (s.health.id, s.pending_tickets))
            .collect()
    }

    /// A server that tracks used tickets has no pending entries in the
    /// store: a ticket counts until that server's health is newer than it.
    /// For a server from before, the store counts them after a refresh.
    #[tokio::test]
    async fn local_tickets_count_until_the_snapshot_covers_them() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let now = now_ms();
        let old = ServerHealth {
            tracks_used_tickets: false,
            ..health("old", now)
        };
        store.put_server(&health("new", now), 60_000).await.unwrap();
        store.put_server(&old, 60_000).await.unwrap();
        let registry = ServerRegistry::new(store.clone(), RegistryConfig::default());
        registry.refresh().await;
        registry.note_ticket_issued("new", now - 10);
        registry.note_ticket_issued("new", now + 10);
        registry.note_ticket_issued("old", now + 10);
        store
            .add_pending_ticket(&old, "t1", now + 30_000)
            .await
            .unwrap();
        assert_eq!(
            pending(&registry),
            HashMap::from([("new".into(), 2), ("old".into(), 1)])
        );

        registry.refresh().await;
        // "new" reported at `now`: the ticket issued before is in its
        // connection count, the one after is not yet. "old": the store's.
        assert_eq!(
            pending(&registry),
            HashMap::from([("new".into(), 1), ("old".into(), 1)])
        );
        store
            .put_server(&health("new", now + 20), 60_000)
            .await
            .unwrap();
        registry.refresh().await;
        assert_eq!(
            pending(&registry),
            HashMap::from([("new".into(), 0), ("old".into(), 1)])
        );
    }

    /// While refreshes succeed, a server silent past dead-after is dead even
    /// between two refreshes; while they fail, the last snapshot stands.
    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_snapshot_alive() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let now = now_ms();
        store.put_server(&health("a", now), 60_000).await.unwrap();
        let registry = ServerRegistry::new(store, RegistryConfig::default());
        registry.refresh().await;
        assert!(registry.is_healthy());
        let later = now + 10_000;
        assert!(registry.live_at(now).iter().any(|s| s.health.id == "a"));
        assert!(registry.live_at(later).is_empty(), "silent for 10 s: dead");
        // The next refresh fails (as if the registry's slot were down).
        registry
            .healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            registry.live_at(later).len(),
            1,
            "a failed read is not evidence that the server died"
        );
    }
}
