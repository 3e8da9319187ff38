//! [`Fleet`]: the chat servers' side of the operator's work, behind a trait
//! so reconcile is tested in-process. [`RedisFleet`] is the real one: health
//! from the shared Redis Cluster registry, drain requests over the chat
//! server's internal HTTP endpoint, endpoint registration in Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_store::{ServerHealth, Store};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    /// Health of every chat server that reports (all clusters).
    async fn servers(&self) -> Result<Vec<ServerHealth>, FleetError>;
    /// Asks the chat server at `address` (`ip:port`) to drain.
    async fn request_drain(&self, address: &str) -> Result<(), FleetError>;
    /// Replaces the registered chat servers of `cluster` (`namespace/name`).
    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> Result<(), FleetError>;
}

pub struct RedisFleet {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    internal_secret: String,
}

impl RedisFleet {
    pub fn new(store: Arc<dyn Store>, internal_secret: String) -> Self {
        RedisFleet {
            store,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a plain HTTP client builds"),
            internal_secret,
        }
    }
}

#[async_trait]
impl Fleet for RedisFleet {
    async fn servers(&self) -> Result<Vec<ServerHealth>, FleetError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.store
            .servers(now)
            .await
            .map(|list| list.into_iter().map(|s| s.health).collect())
            .map_err(|e| FleetError(format!("reading chat server health: {e}")))
    }

    async fn request_drain(&self, address: &str) -> Result<(), FleetError> {
        let response = self
            .http
            .post(format!("http://{address}/internal/drain"))
            .header("x-chat-internal-secret", &self.internal_secret)
            .send()
            .await
            .map_err(|e| FleetError(format!("drain request to {address}: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(FleetError(format!(
                "drain request to {address}: HTTP {}",
                response.status()
            )))
        }
    }

    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> Result<(), FleetError> {
        self.store
            .set_registered(cluster, server_ids)
            .await
            .map_err(|e| FleetError(format!("registering endpoints: {e}")))
    }
}
