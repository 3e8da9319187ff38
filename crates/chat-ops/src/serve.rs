//! Serving HTTP/1 (and WebSocket upgrades) with the limits a public
//! endpoint needs, which `axum::serve` does not set:
//!
//! - **Slow and idle connections.** A client gets `header_read_timeout` to
//!   send a request's headers, and a keep-alive connection as long between
//!   two requests (hyper's header read timeout, with a timer). Without it a
//!   connection that sent half a request, or nothing, was held forever: a
//!   few kilobytes per second from one attacker could hold every file
//!   descriptor of the process.
//! - **A cap on connections**, separate from sessions: at most
//!   `max_connections` are served. Over it, a small reserve
//!   ([`OPS_RESERVE`]) is still accepted, but answers only the ops
//!   endpoints (`/healthz`, `/readyz`, `/metrics`; anything else 503), so
//!   probes and scrapes still work when the cap is hit. Beyond the reserve a
//!   connection is closed at once.
//! - **The peer address** of every request, as axum's `ConnectInfo`, for
//!   per-address limits in handlers.
//!
//! Shutdown: when `shutdown` resolves, no more connections are accepted,
//! in-flight requests finish (bounded), upgraded WebSockets are left to
//! their owners (a chat server drains its sessions itself).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tower::ServiceExt;

use crate::batched_writes::BatchedWrites;

/// Connections accepted over `max_connections`, answering only the ops
/// endpoints.
pub const OPS_RESERVE: usize = 32;

/// How long in-flight requests may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The flags behind [`ConnectionLimits`], shared by the API server and
/// the chat server.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Longest wait for a request's headers, and longest idle time of a
    /// keep-alive connection between two requests: slow or silent clients
    /// are closed.
    #[arg(long, env = "CHAT_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Most connections served at once, WebSocket sessions included; over
    /// it only /healthz, /readyz and /metrics answer. 0: the process's
    /// open-file limit less a margin for its own connections.
    #[arg(long, env = "CHAT_MAX_OPEN_CONNECTIONS", default_value_t = 0)]
    pub max_open_connections: usize,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            max_connections: match self.max_open_connections {
                0 => open_file_limit()
                    .map(|n| n.saturating_sub(FD_MARGIN).max(64))
                    .unwrap_or(ConnectionLimits::default().max_connections),
                n => n,
            },
            write_batch_bytes: 0,
        }
    }
}

/// File descriptors kept for what a process opens itself (Redis, links,
/// logs) and for the ops reserve.
const FD_MARGIN: usize = 512;

/// The soft limit on open files, from /proc/self/limits (Linux).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Limits on the connections of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers, and longest idle time of a
    /// keep-alive connection between two requests.
    pub header_read_timeout: Duration,
    /// Connections served at once (WebSocket sessions included).
    pub max_connections: usize,
    /// Bytes a connection's small writes collect before they go to the
    /// socket ([`BatchedWrites`]; they also go on flush). 0: each write
    /// goes through as it comes (hyper batches its own responses).
    pub write_batch_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            write_batch_bytes: 0,
        }
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves.
/// `ops` answers the connections over the cap (the ops routes; anything
/// else gets 503 `unavailable`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    ops: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ops = ops.fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                ("content-type", "application/json"),
                ("connection", "close"),
            ],
            r#"{"error":{"code":"unavailable","message":"too many connections; retry later"}}"#,
        )
    });
    let served = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(OPS_RESERVE));
    let (stop_tx, stop_rx) = watch::channel(());
    // Every connection task holds a sender: `recv` answers `None` once all
    // of them have finished.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (router, permit) = match served.clone().try_acquire_owned() {
            Ok(permit) => (app.clone(), permit),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(permit) => (ops.clone(), permit),
                Err(_) => {
                    tracing::debug!(%peer, "connection over the cap and the reserve: closed");
                    continue;
                }
            },
        };
        // Small responses and frames go out at once instead of waiting on
        // Nagle (measured by chat-bench: ~40 ms stalls otherwise).
        let _ = tcp.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            }));
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        let header_read_timeout = limits.header_read_timeout;
        let tcp = BatchedWrites::new(tcp, limits.write_batch_bytes);
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(done_tx);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_open_file_limit_unless_set() {
        let auto = ConnectionArgs {
            header_read_timeout_ms: 10_000,
            max_open_connections: 0,
        };
        let limit = open_file_limit().expect("Linux has /proc/self/limits");
        assert_eq!(
            auto.limits().max_connections,
            limit.saturating_sub(FD_MARGIN).max(64)
        );
        let set = ConnectionArgs {
            max_open_connections: 5,
            ..auto
        };
        assert_eq!(set.limits().max_connections, 5);
        assert_eq!(set.limits().header_read_timeout, Duration::from_secs(10));
    }
}
