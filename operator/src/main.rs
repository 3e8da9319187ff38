//! Operator wiring: flags, the ops endpoints, leader election, and the
//! controller (which runs only while this replica holds the lease).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Parser;
use futures_util::StreamExt;
use kube::Client;
use operator::controller::Context;
use operator::fleet::RedisFleetConnector;
use operator::{leader, watches};

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for ChatCluster resources")]
struct Cli {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CHAT_OPERATOR_LISTEN", default_value = "0.0.0.0:9100")]
    listen: SocketAddr,
    /// Namespace to watch (default: all namespaces).
    #[arg(long, env = "CHAT_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Run only while holding this Lease, so several replicas can run.
    #[arg(long, env = "CHAT_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "CHAT_OPERATOR_LEASE", default_value = "chat-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    log_format: chat_ops::LogFormat,
}

/// Ready once connected to the Kubernetes API. Redis is not checked here:
/// each ChatCluster has its own (its `spec.redis`), and one unreachable
/// Redis shows in that cluster's `Degraded` condition, not as an operator
/// that is not ready.
struct OperatorReadiness {
    started: AtomicBool,
}

#[async_trait]
impl chat_ops::ReadinessCheck for OperatorReadiness {
    async fn ready(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting".into());
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chat_ops::init_tracing(cli.log_format);
    let metrics = chat_ops::Metrics::new();
    let readiness = Arc::new(OperatorReadiness {
        started: AtomicBool::new(false),
    });
    let ops: axum::Router = chat_ops::ops_router(metrics.clone(), readiness.clone());
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    tokio::spawn(async move { axum::serve(listener, ops).await });

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = cli
        .identity
        .clone()
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "chat-operator".into()));
    let fleets = Arc::new(RedisFleetConnector::default());
    let ctx = Context::new(client.clone(), fleets, &metrics, &identity);
    readiness.started.store(true, Ordering::Relaxed);

    if !cli.leader_election {
        run_controller(client, cli.namespace.clone(), ctx).await;
        return Ok(());
    }
    let lease_namespace = cli
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        .with_duration(leader::LEASE_DURATION_S)
        .with_grace(leader::LEASE_GRACE_S)
        .build()
        .await
        .context("creating the leader-election lease manager")?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = %cli.lease_name, "waiting for leadership");
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                changed = leader.changed() => if changed.is_err() { break },
                _ = chat_ops::shutdown_signal() => { drop(leader); let _ = lease_task.await; return Ok(()) }
            }
        }
        tracing::info!("became leader: running the controller");
        let watchdog = leader::LeaseWatchdog::new(
            client.clone(),
            &lease_namespace,
            &cli.lease_name,
            &identity,
        );
        tokio::select! {
            _ = run_controller(client.clone(), cli.namespace.clone(), ctx.clone()) => {
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
            _ = async { while leader.changed().await.is_ok() { if !*leader.borrow() { break } } } => {
                tracing::warn!("lost leadership: controller stopped");
            }
            reason = watchdog.lost() => {
                // The lease manager may still believe it leads (it only logs
                // failed renewals); exiting is the one sure way to stop.
                tracing::error!(%reason, "leadership can no longer be confirmed: exiting");
                std::process::exit(1);
            }
        }
    }
}

/// Runs until a shutdown signal.
async fn run_controller(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    let controller = watches::controller(client, namespace.as_deref()).shutdown_on_signal();
    watches::run(controller, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
