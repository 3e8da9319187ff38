//! Store selection by flag or environment, shared by every binary.

use std::sync::Arc;

use crate::{MemoryStore, RedisStore, Store, StoreConfig, StoreResult};

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis Cluster node URLs, comma-separated. Without it the process uses
    /// an in-memory store, which is only useful for one process alone.
    #[arg(long, env = "CHAT_REDIS_URLS", value_delimiter = ',')]
    pub redis_urls: Vec<String>,
    /// Messages kept per room.
    #[arg(long, env = "CHAT_HISTORY_RETENTION", default_value_t = 10_000)]
    pub history_retention: u64,
    /// How long a client_msg_id is remembered for deduplication.
    #[arg(long, env = "CHAT_DEDUP_TTL_MS", default_value_t = 86_400_000)]
    pub dedup_ttl_ms: u64,
}

impl StoreArgs {
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            history_retention: self.history_retention.max(1),
            dedup_ttl_ms: self.dedup_ttl_ms.max(1),
        }
    }

    pub async fn open(&self) -> StoreResult<Arc<dyn Store>> {
        if self.redis_urls.is_empty() {
            tracing::warn!("no --redis-urls: using the in-memory store (single process only)");
            return Ok(Arc::new(MemoryStore::new(self.config())));
        }
        tracing::info!(nodes = self.redis_urls.len(), "connecting to Redis Cluster");
        Ok(Arc::new(
            RedisStore::connect(&self.redis_urls, self.config()).await?,
        ))
    }
}
