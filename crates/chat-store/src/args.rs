//! Store selection by flag or environment, shared by every binary.

use std::sync::Arc;

use crate::{MemoryStore, RedisAccess, RedisStore, Store, StoreConfig, StoreError, StoreResult};

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis Cluster node URLs, comma-separated. Without it the process uses
    /// an in-memory store, which is only useful for one process alone.
    #[arg(long, env = "CHAT_REDIS_URLS", value_delimiter = ',')]
    pub redis_urls: Vec<String>,
    /// ACL user for Redis AUTH (with --redis-password).
    #[arg(long, env = "CHAT_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Password for Redis AUTH (best from a Secret, through the
    /// environment).
    #[arg(long, env = "CHAT_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// PEM file of the CAs that sign the Redis nodes' certificates, for
    /// `rediss://` URLs (default: the system's roots).
    #[arg(long, env = "CHAT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS with Redis (with
    /// --redis-client-key-file).
    #[arg(
        long,
        env = "CHAT_REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    /// PEM key of --redis-client-cert-file.
    #[arg(
        long,
        env = "CHAT_REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<std::path::PathBuf>,
    /// Messages kept per room.
    #[arg(long, env = "CHAT_HISTORY_RETENTION", default_value_t = 10_000)]
    pub history_retention: u64,
    /// How long a client_msg_id is remembered for deduplication.
    #[arg(long, env = "CHAT_DEDUP_TTL_MS", default_value_t = 86_400_000)]
    pub dedup_ttl_ms: u64,
    /// Durability of an acknowledged message: replicas that must have it
    /// before the ack (Redis WAIT). 1 survives the loss of any one master;
    /// 0 acknowledges on the master's write alone (faster, and needed for a
    /// Redis without replicas).
    #[arg(long, env = "CHAT_MIN_REPLICA_ACKS", default_value_t = 1)]
    pub min_replica_acks: u32,
    /// How long a send waits for those replicas before it is refused with
    /// `unavailable` (the client retries with the same client_msg_id).
    #[arg(long, env = "CHAT_REPLICA_ACK_TIMEOUT_MS", default_value_t = 500)]
    pub replica_ack_timeout_ms: u64,
    /// Group commit: appends bound for one Redis master while another batch
    /// is out go together in one pipeline with one WAIT. Under load only:
    /// a lone send goes at once. `false` sends each append alone (for A/B
    /// benchmarks).
    #[arg(long, env = "CHAT_REDIS_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub redis_group_commit: bool,
}

impl StoreArgs {
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            history_retention: self.history_retention.max(1),
            dedup_ttl_ms: self.dedup_ttl_ms.max(1),
            min_replica_acks: self.min_replica_acks,
            replica_ack_timeout_ms: self.replica_ack_timeout_ms.max(1),
            group_commit: self.redis_group_commit,
        }
    }

    /// Credentials and TLS files, read. A file that cannot be read is a
    /// configuration error (the process exits), not a Redis outage.
    pub fn access(&self) -> Result<RedisAccess, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let client_cert = match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        Ok(RedisAccess {
            username: self.redis_username.clone(),
            password: self.redis_password.clone(),
            ca_pem: self.redis_ca_file.as_deref().map(read).transpose()?,
            client_cert,
        })
    }

    pub async fn open(&self) -> StoreResult<Arc<dyn Store>> {
        if self.redis_urls.is_empty() {
            tracing::warn!("no --redis-urls: using the in-memory store (single process only)");
            return Ok(Arc::new(MemoryStore::new(self.config())));
        }
        let access = self
            .access()
            .map_err(|e| StoreError::Unavailable(format!("Redis settings: {e}")))?;
        tracing::info!(nodes = self.redis_urls.len(), access = ?access, "connecting to Redis Cluster");
        Ok(Arc::new(
            RedisStore::connect_with(&self.redis_urls, self.config(), &access).await?,
        ))
    }
}
