//! The WebSocket front of the chat service.
//!
//! A chat server holds client sessions ([`session`]), reports its health to
//! the store every heartbeat, receives deliveries from other processes on
//! the internal link ([`link_endpoint`]), pushes them to local sessions
//! ([`hub`]) in seq order ([`order`]), and drains gracefully on shutdown:
//! marked draining at once (no new placements), every client told to
//! reconnect elsewhere and closed with 1012, then it leaves the registry.

pub mod config;
pub mod hub;
mod link_endpoint;
pub mod mailbox;
pub mod order;
pub mod rate;
mod session;
mod used_tickets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_ops::{Counter, Gauge, Histogram, Metrics, ReadinessCheck};
use chat_protocol::rest::{ErrorBody, ServerState};
use chat_protocol::{now_ms, ErrorCode, Limits};
use chat_routing::{
    LinkConfig, LinkPool, LocalDelivery, MessageRouter, RegistryConfig, ServerRegistry,
};
use chat_store::{ServerHealth, SessionLocation, Store};

pub use config::ChatConfig;
use hub::SessionHub;
use order::LatestSeqs;

/// Rooms one catch-up read covers (one script per Redis master for them).
const CATCH_UP_BATCH: usize = 500;

/// What the catch-up read last, kept by its task between rounds.
#[derive(Default)]
struct CatchUpRead {
    /// The tracked rooms' count of changes `rooms` is as of.
    changes: Option<u64>,
    /// Every room local sessions follow.
    rooms: Vec<Arc<str>>,
    /// Their seqs as last read, in the same order (empty until read).
    seqs: Vec<u64>,
    /// What sessions were last given: the seqs when a room last moved.
    published: Arc<LatestSeqs>,
}

impl CatchUpRead {
    /// The followed rooms changed (as of `changes`): the next read is
    /// compared with what sessions were last given, not the last read.
    fn follow(&mut self, changes: u64, rooms: Vec<Arc<str>>) {
        self.changes = Some(changes);
        self.rooms = rooms;
        self.seqs.clear();
    }

    /// Takes the seqs just read for `rooms`; the map to give every session
    /// if a room moved.
    fn read(&mut self, seqs: Vec<u64>) -> Option<Arc<LatestSeqs>> {
        let moved = if seqs.len() == self.seqs.len() {
            seqs.iter().zip(&self.seqs).any(|(seq, old)| seq > old)
        } else {
            // The rooms changed since the last read: against what sessions
            // were last given (a room they were not given counts as moved).
            let published = &self.published;
            (self.rooms.iter().zip(&seqs))
                .any(|(room, seq)| published.get(room).is_none_or(|old| seq > old))
        };
        self.seqs = seqs;
        if !moved {
            return None;
        }
        let latest = self.rooms.iter().cloned().zip(self.seqs.iter().copied());
        self.published = Arc::new(latest.collect());
        Some(self.published.clone())
    }
}

/// Users one presence refresh step covers. The Redis store keeps its
/// commands in flight bounded by itself; this bounds the sessions read
/// back for the send limit and the update made from them, and the heap
/// the allocator keeps after it: with the whole list in one step, 4,011
/// against 3,683 B per idle session (docs/benchmarks.md, "Idle memory
/// after the first presence refresh").
const PRESENCE_REFRESH_STEP: usize = 100;

pub struct ChatMetrics {
    pub sessions: Arc<Gauge>,
    pub sessions_opened: Arc<Counter>,
    pub handshakes_refused: Arc<Counter>,
    pub frames_received: Arc<Counter>,
    pub messages_stored: Arc<Counter>,
    pub frames_delivered: Arc<Counter>,
    pub link_batches: Arc<Counter>,
    pub gap_fills: Arc<Counter>,
    pub slow_consumers: Arc<Counter>,
    pub sends_unavailable: Arc<Counter>,
    pub health_reports_failed: Arc<Counter>,
    pub send_ack_latency: Arc<Histogram>,
    pub delivery_latency: Arc<Histogram>,
}

impl ChatMetrics {
    fn new(m: &Metrics) -> Self {
        ChatMetrics {
            sessions: m.gauge("chat_server_sessions", "Open WebSocket sessions."),
            sessions_opened: m.counter("chat_server_sessions_opened_total", "Sessions accepted."),
            handshakes_refused: m.counter(
                "chat_server_handshakes_refused_total",
                "Upgrades refused (bad ticket, draining, full).",
            ),
            frames_received: m.counter(
                "chat_server_frames_received_total",
                "Client frames received.",
            ),
            messages_stored: m.counter(
                "chat_server_messages_stored_total",
                "Messages stored from WebSocket sends.",
            ),
            frames_delivered: m.counter(
                "chat_server_frames_delivered_total",
                "Message and typing frames written to clients.",
            ),
            link_batches: m.counter(
                "chat_server_link_batches_total",
                "Delivery batches received on internal links.",
            ),
            gap_fills: m.counter(
                "chat_server_gap_fills_total",
                "Out-of-order gaps filled from history.",
            ),
            slow_consumers: m.counter(
                "chat_server_slow_consumer_disconnects_total",
                "Sessions closed because their queue was full.",
            ),
            sends_unavailable: m.counter(
                "chat_server_sends_unavailable_total",
                "WebSocket sends refused as unavailable (not confirmed as stored; the client retries).",
            ),
            health_reports_failed: m.counter(
                "chat_server_health_reports_failed_total",
                "Health reports that did not reach Redis (Redis unreachable from this server).",
            ),
            send_ack_latency: m.histogram(
                "chat_server_send_ack_latency_seconds",
                "From a WebSocket send's arrival to its ack being written.",
                chat_ops::latency_buckets(),
            ),
            delivery_latency: m.histogram(
                "chat_server_delivery_latency_seconds",
                "From a message's storing (its ts) to its hand-over to this server's sessions.",
                chat_ops::latency_buckets(),
            ),
        }
    }
}

pub struct ChatServer {
    pub config: ChatConfig,
    pub allowed_origins: chat_auth::AllowedOrigins,
    pub server_id: String,
    pub limits: Limits,
    pub store: Arc<dyn Store>,
    pub hub: Arc<SessionHub>,
    pub user_rates: rate::UserRateLimits,
    pub handshake_rates: rate::HandshakeLimits,
    pub router: Arc<MessageRouter>,
    pub registry: Arc<ServerRegistry>,
    pub metrics: ChatMetrics,
    metrics_registry: Arc<Metrics>,
    /// Set once the store answered and startup finished (previous
    /// incarnation reaped, first health report): until then the server is
    /// not ready and refuses handshakes.
    started: AtomicBool,
    draining: AtomicBool,
    /// Set once the drain has finished and the server left the registry:
    /// health reports stop so it does not reappear.
    drained: AtomicBool,
    /// When a health report last reached the store.
    last_report_ok: std::sync::Mutex<std::time::Instant>,
    /// Runs the catch-up at once (after this server was counted dead).
    catch_up_now: Arc<tokio::sync::Notify>,
    /// Tickets used since this process started (those that say when they
    /// were issued; older ones are taken from the store).
    used_tickets: used_tickets::UsedTickets,
}

impl ChatServer {
    pub fn new(config: ChatConfig, store: Arc<dyn Store>) -> Arc<Self> {
        let server_id = config.server_id();
        let metrics_registry = Metrics::new();
        let metrics = ChatMetrics::new(&metrics_registry);
        let group_commit = store.clone();
        metrics_registry.counters_fn(
            "chat_server",
            move || group_commit.group_commit_stats().unwrap_or_default(),
            &chat_store::GROUP_COMMIT_COUNTERS,
        );
        let presence_index = store.clone();
        metrics_registry.counters_fn(
            "chat_server",
            move || presence_index.presence_index_stats().unwrap_or_default(),
            &chat_store::PRESENCE_INDEX_COUNTERS,
        );
        let hub = Arc::new(SessionHub::with_delivery_latency(
            metrics.delivery_latency.clone(),
        ));
        let registry = ServerRegistry::new(
            store.clone(),
            RegistryConfig {
                refresh_interval_ms: 250,
                dead_after_ms: config.dead_after_ms,
                require_registration: false,
            },
        );
        registry.spawn_refresh();
        let links = LinkPool::new(LinkConfig {
            internal_secret: config.internal_secret.clone(),
            ..LinkConfig::default()
        });
        let router = Arc::new(
            MessageRouter::new(
                store.clone(),
                registry.clone(),
                links,
                Some((server_id.clone(), hub.clone() as Arc<dyn LocalDelivery>)),
            )
            .with_fanout_limits(config.fanout),
        );
        let limits = Limits {
            max_frame_bytes: config.max_frame_bytes,
            max_body_bytes: config.max_body_bytes,
            ..Limits::default()
        };
        Arc::new(ChatServer {
            allowed_origins: chat_auth::AllowedOrigins::new(&config.cors_origins),
            metrics,
            metrics_registry,
            server_id,
            limits,
            store,
            hub,
            user_rates: rate::UserRateLimits::default(),
            handshake_rates: rate::HandshakeLimits::default(),
            router,
            registry,
            config,
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            last_report_ok: std::sync::Mutex::new(std::time::Instant::now()),
            catch_up_now: Arc::new(tokio::sync::Notify::new()),
            used_tickets: used_tickets::UsedTickets::new(now_ms()),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn health(&self) -> ServerHealth {
        let connections = self.hub.connections() as u64;
        ServerHealth {
            id: self.server_id.clone(),
            url: self.config.public_url(),
            internal_url: self.config.internal_url(),
            state: if self.is_draining() {
                ServerState::Draining
            } else {
                ServerState::Ready
            },
            connections,
            load: connections as f64 / self.config.max_connections.max(1) as f64,
            last_seen_ms: now_ms(),
            tickets_in_own_slot: true,
            tracks_used_tickets: true,
        }
    }

    /// Enforces the ticket's single use: in memory when it says when it was
    /// issued (see `used_tickets`), else by taking its pending entry from
    /// the store, where an API server from before wrote it. `Err` carries
    /// the refusal: 401 with a reason, or 503 when the store is down.
    async fn use_ticket(
        &self,
        ticket: &chat_auth::ticket::Ticket,
        now: u64,
    ) -> Result<(), (StatusCode, &'static str)> {
        if let Some(issued_at) = ticket.issued_at_ms {
            return self
                .used_tickets
                .claim(&ticket.id, issued_at, ticket.expires_at_ms, now)
                .map_err(|refused| (StatusCode::UNAUTHORIZED, refused.reason()));
        }
        match self
            .store
            .take_pending_ticket(&self.server_id, &ticket.id, now)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err((StatusCode::UNAUTHORIZED, "ticket already used or unknown")),
            Err(e) => {
                tracing::warn!(error = %e, "ticket check failed");
                Err((StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"))
            }
        }
    }

    /// Writes this server's health. After a silence that made it count as
    /// dead it also starts announcing every session again, in the
    /// background; the task is returned so tests can wait for it.
    async fn report_health(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        match self
            .store
            .put_server(&self.health(), self.config.dead_after_ms)
            .await
        {
            Ok(()) => {
                let silent_for = std::mem::replace(
                    &mut *self
                        .last_report_ok
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                    std::time::Instant::now(),
                )
                .elapsed();
                // Reaped once the record expired (dead-after), or sooner by
                // a process that found this server's port refusing: a
                // reaper leaves a mark, taken here at every report (one
                // read a second); a silence that long counts too, in case
                // the mark could not be read.
                let dead_after = Duration::from_millis(self.config.dead_after_ms);
                let marked = match self.store.take_reaped_mark(&self.server_id).await {
                    Ok(marked) => marked,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read whether this server was reaped");
                        false
                    }
                };
                if marked || silent_for >= chat_routing::may_have_been_reaped_after(dead_after) {
                    tracing::warn!(
                        silent_ms = silent_for.as_millis() as u64,
                        marked,
                        "reaped, or health reports were missing long enough to have been: announcing every session again and catching up"
                    );
                    // Deliveries routed meanwhile were dropped: every
                    // session checks its rooms against the store now.
                    self.catch_up_now.notify_one();
                    let server = self.clone();
                    return Some(tokio::spawn(async move {
                        server.announce_sessions_again().await
                    }));
                }
                None
            }
            Err(e) => {
                self.metrics.health_reports_failed.inc();
                tracing::warn!(error = %e, "health report failed");
                None
            }
        }
    }

    /// Routers forget the sessions of a server missing from the registry
    /// for long (`chat_routing::router::FORGET_MISSING_AFTER`), and a user's
    /// presence expires without refreshes. After an outage that long, this
    /// puts every live session back (announcing is idempotent). Messages
    /// routed while it was gone reach the sessions by gap fill.
    async fn announce_sessions_again(&self) {
        use futures_util::StreamExt;
        let sessions = self.hub.sessions();
        let ttl = self.config.presence_ttl_ms;
        let failed = futures_util::stream::iter(sessions)
            .map(|(user, session)| async move {
                let location = SessionLocation {
                    session,
                    server_id: self.server_id.clone(),
                };
                let presence_max = self.router.fanout_limits().presence_max_room_members;
                match self
                    .store
                    .add_session_announced(&user, &location, ttl, presence_max)
                    .await
                {
                    Ok(added) => {
                        // Reaped while it was gone: its users come back online.
                        if let Some(change) = added.came_online {
                            self.router
                                .announce_presence_to(&change, &added.presence_audiences)
                                .await;
                        }
                        false
                    }
                    Err(_) => true,
                }
            })
            .buffer_unordered(64)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            tracing::warn!(failed, "some sessions could not be announced again");
        }
    }

    /// A process restarted under the same id (a StatefulSet pod) finds the
    /// sessions of the one before it in the store, never to be closed:
    /// their users are reported offline before this one takes sessions.
    async fn reap_previous_incarnation(&self) {
        let presence_max = self.router.fanout_limits().presence_max_room_members;
        match self.store.reap_server(&self.server_id, presence_max).await {
            Ok(reaped) => {
                self.router.announce_reaped(&reaped).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not reap the sessions of a previous run"),
        }
    }

    /// Reads the latest seq of every room local sessions follow
    /// ([`CATCH_UP_BATCH`] rooms per read) and publishes it when a room
    /// moved, so that sessions behind the store fill from history. Deliveries are
    /// fast and this is slow on purpose: a session counts as behind only
    /// after `gap_fill_delay` without the delivery arriving.
    ///
    /// It runs every second for every followed room, so in the usual case
    /// (no room started or stopped being followed, none moved) it compares
    /// the seqs with `last`'s in place, and makes no map and copies no name.
    async fn catch_up(&self, last: &mut CatchUpRead) {
        if let Some((changes, rooms)) = self.hub.tracked_rooms().names_since(last.changes) {
            last.follow(changes, rooms);
        }
        if last.rooms.is_empty() {
            return;
        }
        let mut seqs = Vec::with_capacity(last.rooms.len());
        for chunk in last.rooms.chunks(CATCH_UP_BATCH) {
            let names: Vec<&str> = chunk.iter().map(|room| &**room).collect();
            match self.store.latest_seqs(&names).await {
                Ok(read) => seqs.extend(read),
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up could not read the latest seqs");
                    return;
                }
            }
        }
        if let Some(latest) = last.read(seqs) {
            self.hub.catch_up_all(&latest);
        }
    }

    fn spawn_catch_up(self: &Arc<Self>) {
        let interval = Duration::from_millis(self.config.catch_up_interval_ms);
        if interval.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        let now = self.catch_up_now.clone();
        tokio::spawn(async move {
            let mut last = CatchUpRead::default();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = now.notified() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                if server.drained.load(Ordering::Relaxed) {
                    return;
                }
                server.catch_up(&mut last).await;
            }
        });
    }

    /// Extends the presence records of the users with sessions here by a
    /// TTL, and updates their shares of the send limit,
    /// [`PRESENCE_REFRESH_STEP`] users at a time.
    async fn refresh_presence(&self) {
        let users = self.hub.users();
        for step in users.chunks(PRESENCE_REFRESH_STEP) {
            if let Err(e) = self
                .store
                .refresh_sessions(step, self.config.presence_ttl_ms)
                .await
            {
                tracing::warn!(error = %e, users = step.len(), "presence refresh failed");
            }
            self.update_send_shares(step).await;
        }
    }

    /// Reads on how many live chat servers each of `users` has sessions,
    /// and gives each that share of the per-user send limit here, so the
    /// limit holds across the cluster (see [`rate::UserRateLimits`]).
    pub(crate) async fn update_send_shares(&self, users: &[String]) {
        let config = &self.config;
        if config.user_send_rate_per_s == 0 || users.is_empty() {
            return;
        }
        let sessions = match self.store.sessions_of(users).await {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::debug!(error = %e, "reading users' sessions for the send limit failed");
                return;
            }
        };
        self.set_send_shares(sessions).await;
    }

    /// [`Self::update_send_shares`] from the users' sessions as the caller
    /// already has them (a new session: the store's answer to adding it).
    pub(crate) async fn set_send_shares(&self, sessions: HashMap<String, Vec<SessionLocation>>) {
        let config = &self.config;
        if config.user_send_rate_per_s == 0 || sessions.is_empty() {
            return;
        }
        // A session on a server this one has not seen yet (it started after
        // the last registry read) would count as on a dead server, and the
        // user would get a whole burst here: read the registry again first,
        // as routing does (at most every 100 ms).
        let unknown = sessions
            .values()
            .flatten()
            .any(|l| l.server_id != self.server_id && !self.registry.is_live(&l.server_id));
        if unknown {
            self.registry
                .refresh_if_older_than(Duration::from_millis(100))
                .await;
        }
        let shares = sessions.into_iter().map(|(user, locations)| {
            let mut servers: Vec<&str> = locations
                .iter()
                .map(|l| l.server_id.as_str())
                .filter(|id| *id == self.server_id || self.registry.is_live(id))
                .collect();
            servers.sort_unstable();
            servers.dedup();
            (user, servers.len().max(1) as u32)
        });
        self.user_rates.set_shares(
            shares,
            config.user_send_rate_per_s,
            config.user_send_burst,
            std::time::Instant::now(),
        );
    }

    /// Every session pings its client each `ws_ping_interval`, told by one
    /// server-wide timer: a timer per session was part of every idle
    /// session's memory. The sessions are pinged a group at a time
    /// ([`mailbox::PING_GROUPS`]), spread over the interval; a session's
    /// group is fixed, so its pings stay one interval apart, and its first
    /// comes within one interval of its start, which is all the idle check
    /// needs.
    fn spawn_pinger(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.ws_ping_interval_ms.max(100))
            / u32::from(mailbox::PING_GROUPS);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for group in (0..mailbox::PING_GROUPS).cycle() {
                ticks.tick().await;
                let Some(server) = weak.upgrade() else { return };
                if server.drained.load(Ordering::Relaxed) {
                    return;
                }
                server.hub.ping_group(group);
            }
        });
    }

    /// Health every heartbeat; presence refresh every third of its TTL.
    fn spawn_reporters(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms.max(50));
        tokio::spawn(async move {
            loop {
                let Some(server) = weak.upgrade() else { return };
                if server.drained.load(Ordering::Relaxed) {
                    return;
                }
                server.report_health().await;
                server.metrics.sessions.set(server.hub.connections() as i64);
                drop(server);
                tokio::time::sleep(interval).await;
            }
        });
        let weak = Arc::downgrade(self);
        let interval = Duration::from_millis((self.config.presence_ttl_ms / 3).max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(server) = weak.upgrade() else { return };
                server.refresh_presence().await;
            }
        });
    }

    /// Starts a drain in the background (idempotent): the operator calls
    /// this before it removes the pod, and the process stays up until the
    /// pod is deleted.
    pub fn start_drain(self: &Arc<Self>) -> bool {
        if self.draining.swap(true, Ordering::Relaxed) {
            return false;
        }
        let server = self.clone();
        tokio::spawn(async move { server.drain().await });
        true
    }

    /// Graceful drain: draining at once, clients told to reconnect, wait
    /// for them to leave (bounded by the drain timeout), leave the registry.
    pub async fn drain(self: &Arc<Self>) {
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(self.config.drain_timeout_ms);
        self.draining.store(true, Ordering::Relaxed);
        self.report_health().await;
        tracing::info!(sessions = self.hub.connections(), "draining");
        self.hub.drain_all();
        while self.hub.connections() > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.drained.store(true, Ordering::Relaxed);
        if let Err(e) = self.store.remove_server(&self.server_id).await {
            tracing::warn!(error = %e, "could not leave the registry; it expires by itself");
        }
        tracing::info!(
            remaining = self.hub.connections(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drained"
        );
    }

    pub fn app(self: &Arc<Self>) -> Router {
        let routes = Router::new()
            .route("/ws", get(ws_upgrade))
            .route("/internal/link", get(link_endpoint::upgrade))
            .route("/internal/drain", axum::routing::post(link_endpoint::drain))
            .with_state(self.clone());
        routes.merge(self.ops())
    }

    /// `/healthz`, `/readyz`, `/metrics`.
    fn ops(self: &Arc<Self>) -> Router {
        chat_ops::ops_router(
            self.metrics_registry.clone(),
            Arc::new(ChatReadiness(self.clone())),
        )
    }

    /// Serves on `listener` until `shutdown` resolves, then drains. Returns
    /// once the drain is over.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Serve /healthz, /readyz and /metrics at once, so that a server
        // started before Redis answers (every fresh `helm install`) stays
        // up and reports not ready instead of crash-looping.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (app, ops) = (self.app(), self.ops());
        let mut limits = self.config.connections.limits();
        // A session's frames are collected below tungstenite (whose own
        // write buffer is 0, see `ws_upgrade`), in a buffer freed when
        // the batch is flushed.
        limits.write_batch_bytes = self.config.ws_write_buffer_bytes.min(1 << 20);
        // Slow, idle and surplus connections: see chat_ops::serve (which
        // also sets TCP_NODELAY: back-to-back frames would otherwise stall
        // ~40 ms on the client's delayed ACK, measured by chat-bench).
        let server = tokio::spawn(chat_ops::serve::serve(
            listener,
            app,
            ops,
            limits,
            async move {
                let _ = stop_rx.await;
            },
        ));
        tokio::pin!(shutdown);
        tokio::select! {
            _ = self.wait_for_store() => {}
            _ = &mut shutdown => {
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
                return Ok(());
            }
        }
        self.reap_previous_incarnation().await;
        self.report_health().await;
        self.spawn_reporters();
        self.spawn_catch_up();
        self.spawn_pinger();
        chat_routing::spawn_presence_reaper(
            self.router.clone(),
            self.store.clone(),
            chat_routing::presence_reap_interval(Duration::from_millis(self.config.dead_after_ms)),
        );
        self.started.store(true, Ordering::Relaxed);
        tracing::info!(server_id = %self.server_id, url = %self.config.public_url(), "chat-server ready");
        shutdown.await;
        self.drain().await;
        let _ = stop_tx.send(());
        // Connections still open after the drain (timeout hit) must not keep
        // the process alive: give the server a moment, then move on.
        let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
        Ok(())
    }
}

impl ChatServer {
    /// Returns once the store answers a ping, trying with back-off (250 ms
    /// up to 5 s).
    async fn wait_for_store(&self) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.store.ping().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "store not reachable; not ready yet");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

struct ChatReadiness(Arc<ChatServer>);

#[async_trait]
impl ReadinessCheck for ChatReadiness {
    async fn ready(&self) -> Result<(), String> {
        if !self.0.started.load(Ordering::Relaxed) {
            return Err("starting: waiting for the store".into());
        }
        if self.0.is_draining() {
            return Err("draining".into());
        }
        self.0.store.ping().await.map_err(|e| e.to_string())
    }
}

#[derive(serde::Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// Checks the ticket before upgrading: a refused client gets an HTTP error,
/// never a WebSocket.
async fn ws_upgrade(
    State(server): State<Arc<ChatServer>>,
    Query(query): Query<TicketQuery>,
    headers: axum::http::HeaderMap,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let unauthorized = |server: &ChatServer, why: &str| {
        server.metrics.handshakes_refused.inc();
        refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, why)
    };
    // First and cheapest: one address cannot flood the server with upgrades.
    if let Some(axum::Extension(axum::extract::ConnectInfo(peer))) = peer {
        let config = &server.config;
        if !server.handshake_rates.check(
            peer.ip(),
            config.handshakes_per_ip_per_s,
            config.handshake_burst_per_ip,
            std::time::Instant::now(),
        ) {
            server.metrics.handshakes_refused.inc();
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many handshakes from this address; retry later",
            );
        }
    }
    // A page from a foreign origin cannot use a ticket it obtained (or
    // stole); non-browser clients send no Origin and are not checked.
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .filter(|_| !server.allowed_origins.is_empty());
    if let Some(origin) = origin {
        let origin = origin.to_str().unwrap_or("");
        if !server.allowed_origins.allows(origin) {
            server.metrics.handshakes_refused.inc();
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this origin may not open WebSockets here (see --cors-origins)",
            );
        }
    }
    let Some(text) = query.ticket else {
        return unauthorized(&server, "missing ticket");
    };
    let now = now_ms();
    let ticket = match chat_auth::ticket::verify_ticket(
        server.config.ticket_secret.as_bytes(),
        &text,
        &server.server_id,
        now,
    ) {
        Ok(t) => t,
        Err(e) => return unauthorized(&server, &format!("invalid ticket: {e}")),
    };
    if server.is_draining() {
        server.metrics.handshakes_refused.inc();
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this chat server is draining; call /v1/connect again",
        );
    }
    if !server.started.load(Ordering::Relaxed) {
        server.metrics.handshakes_refused.inc();
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this chat server is starting; call /v1/connect again",
        );
    }
    if server.hub.connections() >= server.config.max_connections {
        server.metrics.handshakes_refused.inc();
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this chat server is full; call /v1/connect again",
        );
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    match server.use_ticket(&ticket, now).await {
        Ok(()) => {}
        Err((StatusCode::UNAUTHORIZED, reason)) => return unauthorized(&server, reason),
        Err((status, reason)) => return refuse(status, ErrorCode::Unavailable, reason),
    }
    let max = server.config.max_frame_bytes;
    // A small read buffer instead of tungstenite's 128 KiB: that default
    // was zero-filled on every read (25% of the server's CPU under load)
    // and was most of an idle session's memory (chat-bench: 146 KB -> 15-17
    // KB per session at 4 KiB, saturation 28k -> 40k deliveries/s in Redis
    // mode; see docs/benchmarks.md).
    upgrade
        .read_buffer_size(server.config.ws_read_buffer_bytes.clamp(256, 1 << 20))
        // Each frame goes through to the connection at once: the batching
        // is `chat_ops::batched_writes` (`--ws-write-buffer-bytes`), whose
        // buffer, unlike tungstenite's, is freed when the batch is flushed.
        .write_buffer_size(0)
        .max_frame_size(max)
        .max_message_size(max)
        .on_upgrade(move |socket| session::run(server, socket, ticket.user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SessionHandle;
    use crate::mailbox::Mailbox;
    use chat_store::{MemoryStore, NewRoom};

    #[test]
    fn the_catch_up_gives_sessions_a_map_only_when_a_room_moved() {
        let names = |rooms: &[&str]| rooms.iter().map(|r| Arc::<str>::from(*r)).collect();
        let mut last = CatchUpRead::default();
        last.follow(1, names(&["a", "b"]));
        let first = last
            .read(vec![3, 0])
            .expect("rooms never given count as moved");
        assert_eq!((first["a"], first["b"]), (3, 0));
        assert!(last.read(vec![3, 0]).is_none(), "nothing moved");
        let moved = last.read(vec![3, 1]).expect("b moved");
        assert_eq!((moved["a"], moved["b"]), (3, 1));
        // A room no longer followed: the rest compared with what was given.
        last.follow(2, names(&["b"]));
        assert!(last.read(vec![1]).is_none());
        assert!(last.read(vec![1]).is_none());
        // A room newly followed counts as moved.
        last.follow(3, names(&["b", "c"]));
        let moved = last.read(vec![1, 0]).expect("c is new");
        assert_eq!((moved["b"], moved["c"]), (1, 0));
    }

    fn config() -> ChatConfig {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: ChatConfig,
        }
        let args = [
            "chat-server",
            "--server-id=s-test",
            "--ticket-secret=t",
            "--internal-secret=i",
        ];
        <Cli as clap::Parser>::parse_from(args).config
    }

    /// A session in the hub that never reads nor leaves by itself.
    fn add_idle_session(server: &ChatServer, user: &str, session: &str) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::new(4));
        server.hub.add(
            user,
            SessionHandle {
                session: session.into(),
                mailbox: mailbox.clone(),
            },
        );
        mailbox
    }

    /// The state `store` has on record for `server`, if any.
    async fn recorded_state(store: &Arc<dyn Store>, server: &ChatServer) -> Option<ServerState> {
        store
            .servers(now_ms())
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.health.id == server.server_id)
            .map(|s| s.health.state)
    }

    /// A user's send limit is shared with a chat server that started after
    /// this one last read the registry: this one reads it again instead of
    /// counting the other's session as on a dead server (which gave the
    /// user a whole burst here; e2e `faults.rs` saw it once).
    #[tokio::test]
    async fn a_send_share_counts_a_server_started_since_the_last_registry_read() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let mut config = config();
        config.user_send_rate_per_s = 1;
        config.user_send_burst = 12;
        let server = ChatServer::new(config, store.clone());
        server.report_health().await;
        server.registry.refresh().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let other = chat_store::ServerHealth {
            id: "s-other".into(),
            url: "ws://127.0.0.1:1/ws".into(),
            internal_url: "http://127.0.0.1:1".into(),
            state: chat_store::ServerState::Ready,
            connections: 1,
            load: 0.0,
            last_seen_ms: now_ms(),
            tickets_in_own_slot: true,
            tracks_used_tickets: true,
        };
        store.put_server(&other, 60_000).await.unwrap();
        for (session, server_id) in [("s_1", "s-test"), ("s_2", "s-other")] {
            let location = chat_store::SessionLocation {
                session: session.into(),
                server_id: server_id.into(),
            };
            store.add_session("alice", &location, 60_000).await.unwrap();
        }
        server.update_send_shares(&["alice".to_owned()]).await;
        let now = std::time::Instant::now();
        let allowed = (0..12)
            .filter(|_| server.user_rates.check("alice", 1, 12, now))
            .count();
        assert_eq!(allowed, 6, "half the burst of 12: alice is on two servers");
    }

    /// The periodic refresh reaches every user with a session here, over
    /// several steps: presence records outlive their TTL only through it.
    #[tokio::test]
    async fn the_presence_refresh_extends_every_users_record() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let mut config = config();
        config.presence_ttl_ms = 2_000;
        let server = ChatServer::new(config, store.clone());
        let users: Vec<String> = (0..2 * PRESENCE_REFRESH_STEP + 1)
            .map(|i| format!("u{i}"))
            .collect();
        for (i, user) in users.iter().enumerate() {
            let location = SessionLocation {
                session: format!("s_{i}"),
                server_id: server.server_id.clone(),
            };
            store.add_session(user, &location, 2_000).await.unwrap();
            add_idle_session(&server, user, &location.session);
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        server.refresh_presence().await;
        // Past the TTL the records were written with, well within the one
        // the refresh gave them.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let present = store.sessions_of(&users).await.unwrap();
        let missing: Vec<&String> = users.iter().filter(|u| !present.contains_key(*u)).collect();
        assert!(missing.is_empty(), "records expired: {missing:?}");
    }

    /// Tickets that say when they were issued are checked in memory; one
    /// without (from an API server from before) is taken from the store's
    /// pending entries, once.
    #[tokio::test]
    async fn tickets_are_used_once_in_memory_or_from_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let server = ChatServer::new(config(), store.clone());
        let now = now_ms();
        let ticket = |id: &str, issued_at_ms| chat_auth::ticket::Ticket {
            id: id.into(),
            user: "alice".into(),
            server_id: "s-test".into(),
            expires_at_ms: now + 30_000,
            issued_at_ms,
        };
        let unauthorized =
            |r: Result<(), (StatusCode, &str)>| matches!(r, Err((StatusCode::UNAUTHORIZED, _)));
        let fresh = ticket("t-new", Some(now));
        assert_eq!(server.use_ticket(&fresh, now).await, Ok(()));
        assert!(unauthorized(server.use_ticket(&fresh, now).await));
        let before_start = ticket("t-early", Some(now - 60_000));
        assert!(unauthorized(server.use_ticket(&before_start, now).await));

        let legacy = ticket("t-old", None);
        assert!(
            unauthorized(server.use_ticket(&legacy, now).await),
            "no pending entry"
        );
        let old_health = ServerHealth {
            tracks_used_tickets: false,
            ..server.health()
        };
        store
            .add_pending_ticket(&old_health, "t-old", now + 30_000)
            .await
            .unwrap();
        assert_eq!(server.use_ticket(&legacy, now).await, Ok(()));
        assert!(unauthorized(server.use_ticket(&legacy, now).await));
    }

    /// SIGTERM and the operator's drain: the server reports `draining` and
    /// stops being ready at once, while its sessions are still connected,
    /// and leaves the registry only once they are gone.
    #[tokio::test]
    async fn a_drain_reports_draining_before_the_sessions_leave() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let server = ChatServer::new(config(), store.clone());
        let _queue = add_idle_session(&server, "alice", "s_a");
        server.report_health().await;
        assert_eq!(
            recorded_state(&store, &server).await,
            Some(ServerState::Ready)
        );

        let drain = tokio::spawn({
            let server = server.clone();
            async move { server.drain().await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while recorded_state(&store, &server).await != Some(ServerState::Draining) {
            assert!(
                std::time::Instant::now() < deadline,
                "no draining report within 5 s of the drain (the drain timeout is {} ms)",
                server.config.drain_timeout_ms
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(server.hub.connections(), 1, "the session is still there");
        assert!(!drain.is_finished(), "the drain waits for the session");
        assert!(ChatReadiness(server.clone()).ready().await.is_err());

        // The session leaves: the drain ends and the server leaves the registry.
        server.hub.remove("alice", "s_a");
        drain.await.unwrap();
        assert_eq!(recorded_state(&store, &server).await, None);
    }

    /// A store with room `r_1`, alice its only member, and a server with
    /// an idle session of hers (`s_a`) that the room's index does not list.
    async fn alice_in_a_room_on_a_server() -> (Arc<dyn Store>, Arc<ChatServer>, Arc<Mailbox>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        store
            .create_room(NewRoom {
                id: "r_1".into(),
                name: "room".into(),
                created_by: "alice".into(),
                created_at: 0,
                members: vec!["alice".into()],
            })
            .await
            .unwrap();
        let server = ChatServer::new(config(), store.clone());
        let queue = add_idle_session(&server, "alice", "s_a");
        (store, server, queue)
    }

    /// A server that a reaper took the sessions of while it lived (its
    /// port refused a probe, as a firewall that rejects rather than drops
    /// can make it) finds the reaper's mark at its next report, however
    /// timely, and announces its sessions again.
    #[tokio::test]
    async fn a_server_reaped_while_it_lives_announces_its_sessions_again() {
        let (store, server, _queue) = alice_in_a_room_on_a_server().await;
        let location = SessionLocation {
            session: "s_a".into(),
            server_id: "s-test".into(),
        };
        store.add_session("alice", &location, 60_000).await.unwrap();
        assert!(server.report_health().await.is_none());
        assert_eq!(store.room_online("r_1").await.unwrap().len(), 1);

        // A reaper took it (the report it saw is the last one).
        let seen = u64::MAX;
        let reaped = store.reap_silent_server("s-test", seen, 10).await.unwrap();
        assert_eq!(reaped.len(), 1, "alice went offline");
        assert!(store.room_online("r_1").await.unwrap().is_empty());

        server
            .report_health()
            .await
            .expect("a report after a reap announces the sessions again")
            .await
            .unwrap();
        assert_eq!(store.room_online("r_1").await.unwrap().len(), 1);
        assert!(
            server.report_health().await.is_none(),
            "the mark is taken once"
        );
    }

    /// After its health reports stopped reaching the store for long enough
    /// to have been reaped (half the dead-after interval: a reaper that
    /// found its port refusing may have, before its record expired), a
    /// server puts its sessions back into the rooms' presence indexes
    /// (routers may have forgotten them), mark or no mark (it may not
    /// have been readable).
    #[tokio::test]
    async fn a_server_that_may_have_been_reaped_announces_its_sessions_again() {
        let (store, server, _queue) = alice_in_a_room_on_a_server().await;
        assert!(store.room_online("r_1").await.unwrap().is_empty());
        let silent_for = |silence: Duration| {
            *server.last_report_ok.lock().unwrap() = std::time::Instant::now()
                .checked_sub(silence)
                .expect("a monotonic clock that goes back a few seconds");
        };
        let dead_after = Duration::from_millis(server.config.dead_after_ms);
        let threshold = chat_routing::may_have_been_reaped_after(dead_after);

        // A report soon after the last one starts no announcement, nor one
        // after a silence short of the threshold.
        assert!(
            server.report_health().await.is_none(),
            "a timely report announced the sessions again"
        );
        silent_for(threshold - Duration::from_millis(300));
        assert!(
            server.report_health().await.is_none(),
            "a report after a short silence announced the sessions again"
        );
        assert!(store.room_online("r_1").await.unwrap().is_empty());

        // A report after a silence past it, though shorter than dead-after
        // (the record did not expire), announces again.
        let silence = threshold + Duration::from_millis(100);
        assert!(silence < dead_after);
        silent_for(silence);
        server
            .report_health()
            .await
            .expect("a report after a silence past the threshold announces the sessions again")
            .await
            .unwrap();
        let online = store.room_online("r_1").await.unwrap();
        assert_eq!(online.len(), 1);
        assert_eq!(
            (
                online[0].user.as_str(),
                online[0].session.as_str(),
                online[0].server_id.as_str()
            ),
            ("alice", "s_a", "s-test")
        );
    }
}
