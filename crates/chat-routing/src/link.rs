//! [`LinkPool`]: one persistent WebSocket per target chat server.
//!
//! Routing hands a delivery to the target's link task through a bounded
//! channel and returns at once. The task drains whatever has queued up
//! (`recv_many`) into one WebSocket message, so under load many deliveries
//! share one write and one syscall, and at low load a delivery goes out
//! alone without waiting for a timer. A failed write keeps its batch and
//! resends it after reconnecting; the store holds every message anyway, so a
//! batch that cannot be delivered is recovered by clients through `resume`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::delivery::{encode_batch, Delivery};

/// Header carrying the shared secret on internal links.
pub const INTERNAL_SECRET_HEADER: &str = "x-chat-internal-secret";

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub internal_secret: String,
    /// Deliveries queued per target before new ones are dropped.
    pub queue_len: usize,
    /// Most deliveries written in one WebSocket message.
    pub max_batch: usize,
    /// How long a link keeps retrying an unreachable target before it
    /// drops what it holds.
    pub give_up_after_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            internal_secret: String::new(),
            queue_len: 65_536,
            max_batch: 512,
            give_up_after_ms: 5_000,
        }
    }
}

struct Link {
    url: String,
    tx: mpsc::Sender<Arc<Delivery>>,
}

pub struct LinkPool {
    config: LinkConfig,
    links: Mutex<HashMap<String, Link>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl LinkPool {
    pub fn new(config: LinkConfig) -> Arc<Self> {
        Arc::new(LinkPool {
            config,
            links: Mutex::new(HashMap::new()),
            dropped: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Deliveries dropped because a target's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a delivery for the chat server `server_id` at `url`.
    pub fn send(&self, server_id: &str, url: &str, delivery: Arc<Delivery>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let stale = links
            .get(server_id)
            .is_none_or(|l| l.url != url || l.tx.is_closed());
        if stale {
            let (tx, rx) = mpsc::channel(self.config.queue_len);
            tokio::spawn(run_link(
                server_id.to_owned(),
                url.to_owned(),
                self.config.clone(),
                rx,
            ));
            links.insert(
                server_id.to_owned(),
                Link {
                    url: url.to_owned(),
                    tx,
                },
            );
        }
        let link = links.get(server_id).expect("inserted above");
        if link.tx.try_send(delivery).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(server_id, "link queue full: delivery dropped");
        }
    }

    /// Closes links to servers that are no longer live.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live(id));
    }
}

async fn run_link(
    server_id: String,
    url: String,
    config: LinkConfig,
    mut rx: mpsc::Receiver<Arc<Delivery>>,
) {
    let mut pending: Vec<Arc<Delivery>> = Vec::new();
    let mut backoff = Duration::from_millis(20);
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let mut ws = match connect(&url, &config.internal_secret).await {
            Ok(ws) => {
                backoff = Duration::from_millis(20);
                failing_since = None;
                ws
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_millis(config.give_up_after_ms) {
                    tracing::warn!(server_id, error = %e, dropped = pending.len(), "link target unreachable; giving up");
                    return;
                }
                tracing::debug!(server_id, error = %e, "link connect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        loop {
            if pending.is_empty() {
                // `None`: the pool dropped this link (target gone or replaced).
                if rx.recv_many(&mut pending, config.max_batch).await == 0 {
                    let _ = ws.close(None).await;
                    return;
                }
            }
            let text = encode_batch(&pending);
            match ws.send(WsMessage::text(text)).await {
                Ok(()) => pending.clear(),
                Err(e) => {
                    tracing::info!(server_id, error = %e, "link write failed; reconnecting");
                    break;
                }
            }
        }
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, secret: &str) -> Result<WsStream, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        INTERNAL_SECRET_HEADER,
        HeaderValue::from_str(secret).map_err(|e| e.to_string())?,
    );
    let connect = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_nodelay(true);
    }
    Ok(ws)
}
