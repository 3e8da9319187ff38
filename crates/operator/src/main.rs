//! The ChatCluster operator (issue 3). For now this binary only serves the
//! operational endpoints every process has, so the deployment shape and the
//! probes can be wired; the reconcile loop is not written yet.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "ChatCluster operator (stub: serves /healthz, /readyz, /metrics only)"
)]
struct Cli {
    /// Address of the operational endpoints.
    #[arg(long, env = "CHAT_OPERATOR_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    log_format: chat_ops::LogFormat,
}

struct AlwaysReady;

#[async_trait]
impl chat_ops::ReadinessCheck for AlwaysReady {
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chat_ops::init_tracing(cli.log_format);
    let metrics = chat_ops::Metrics::new();
    let app: axum::Router = chat_ops::ops_router(metrics, Arc::new(AlwaysReady));
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tracing::warn!("operator stub: no reconcile loop yet (issue 3)");
    axum::serve(listener, app)
        .with_graceful_shutdown(chat_ops::shutdown_signal())
        .await?;
    Ok(())
}
