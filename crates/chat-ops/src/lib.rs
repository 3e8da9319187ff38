//! Operational plumbing every process shares: structured logs
//! ([`init_tracing`]), Prometheus metrics ([`Metrics`]), the `/healthz`,
//! `/readyz` and `/metrics` endpoints ([`ops_router`]) and the shutdown
//! signal ([`shutdown_signal`]).

pub mod batched_writes;
mod metrics;
pub mod serve;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub use metrics::{latency_buckets, Counter, Gauge, Histogram, Metrics};

/// Log format, chosen by flag: humans read `text`, log pipelines `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// Installs the global `tracing` subscriber. The filter comes from
/// `RUST_LOG` (default `info`). Safe to call more than once (later calls
/// are no-ops), which in-process tests and the local mode rely on.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// What `/readyz` asks: `Err` carries the reason the process is not ready.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    async fn ready(&self) -> Result<(), String>;
}

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Arc<dyn ReadinessCheck>,
}

/// `/healthz` (the process is alive), `/readyz` (it can serve: its
/// dependencies answer) and `/metrics` (Prometheus text format).
pub fn ops_router<S: Clone + Send + Sync + 'static>(
    metrics: Arc<Metrics>,
    readiness: Arc<dyn ReadinessCheck>,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { metrics, readiness })
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    match state.readiness.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// Resolves on SIGTERM or Ctrl-C, whichever comes first.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
