//! [`LinkPool`]: one persistent WebSocket per target chat server.
//!
//! Routing hands a delivery to the target's link task through a bounded
//! channel and returns at once. The task drains whatever has queued up
//! (`recv_many`) into one WebSocket message, so under load many deliveries
//! share one write and one syscall, and at low load a delivery goes out
//! alone without waiting for a timer. A failed write keeps its batch and
//! resends it after reconnecting; the store holds every message anyway, so a
//! batch that cannot be delivered is recovered by the target's catch-up (or
//! by clients through `resume`).
//!
//! While idle the link also reads: a target that closed the link (a drain, a
//! restart under the same id and URL) is noticed at once, not by losing the
//! next batch into a dead socket, and a target that answers no ping for
//! [`LINK_SILENCE_LIMIT`] (frozen, or a half-open connection) is replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::delivery::{encode_batch, Delivery};

/// How often an idle link pings its target.
pub const LINK_PING_EVERY: Duration = Duration::from_secs(5);
/// A link that has heard nothing (not even a pong) for this long is
/// replaced.
pub const LINK_SILENCE_LIMIT: Duration = Duration::from_secs(15);

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
        let ws = match connect(&url, &config.internal_secret).await {
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
        let (mut sink, mut stream) = ws.split();
        let mut heard = std::time::Instant::now();
        let mut ping = tokio::time::interval(LINK_PING_EVERY);
        ping.reset();
        loop {
            if pending.is_empty() {
                tokio::select! {
                    // `None`: the pool dropped this link (target gone or
                    // replaced).
                    n = rx.recv_many(&mut pending, config.max_batch) => {
                        if n == 0 {
                            let _ = sink.close().await;
                            return;
                        }
                    }
                    incoming = stream.next() => match incoming {
                        Some(Ok(_)) => {
                            heard = std::time::Instant::now();
                            continue;
                        }
                        Some(Err(_)) | None => {
                            tracing::info!(server_id, "link closed by its target; reconnecting");
                            break;
                        }
                    },
                    _ = ping.tick() => {
                        if heard.elapsed() > LINK_SILENCE_LIMIT {
                            tracing::info!(server_id, "link target silent; reconnecting");
                            break;
                        }
                        if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            }
            let text = encode_batch(&pending);
            match sink.send(WsMessage::text(text)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            room: "r".into(),
            seq,
            users: vec!["bob".into()],
            frame: Arc::from(format!(r#"{{"type":"message","seq":{seq}}}"#)),
            ts_ms: 0,
        })
    }

    /// A target that closes the link (a drain, a restart under the same id
    /// and URL) is noticed while the link is idle, and the link reconnects
    /// by itself: the next delivery goes over the new connection instead of
    /// into the dead socket (where it used to be lost silently).
    #[tokio::test]
    async fn a_link_closed_by_its_target_reconnects_before_the_next_delivery() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/internal/link", listener.local_addr().unwrap());
        let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(usize, String)>();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                got_tx.send((conn, "open".into())).unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if let WsMessage::Text(text) = msg {
                        got_tx.send((conn, text.as_str().to_owned())).unwrap();
                        if conn == 0 {
                            // The first connection ends after one batch.
                            let _ = ws.close(None).await;
                            break;
                        }
                    }
                }
            }
        });
        async fn next(
            rx: &mut mpsc::UnboundedReceiver<(usize, String)>,
        ) -> Option<(usize, String)> {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .ok()
                .flatten()
        }
        let pool = LinkPool::new(LinkConfig::default());
        pool.send("s1", &url, delivery(1));
        assert_eq!(next(&mut got_rx).await, Some((0, "open".into())));
        let (conn, batch) = next(&mut got_rx).await.expect("the first batch");
        assert_eq!(conn, 0);
        assert!(batch.contains(r#""seq":1"#), "{batch}");
        // The target closed: the link must open a new connection on its own.
        assert_eq!(
            next(&mut got_rx).await,
            Some((1, "open".into())),
            "the link did not notice that its target closed it"
        );
        pool.send("s1", &url, delivery(2));
        let (conn, batch) = next(&mut got_rx).await.expect("the second batch");
        assert_eq!(conn, 1);
        assert!(batch.contains(r#""seq":2"#), "{batch}");
    }
}
