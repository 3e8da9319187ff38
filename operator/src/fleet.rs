//! [`Fleet`]: the chat servers' side of the operator's work, behind a trait
//! so reconcile is tested in-process. [`RedisFleet`] is the real one: health
//! from the cluster's Redis registry, drain requests over the chat server's
//! internal HTTP endpoint, endpoint registration in Redis.
//!
//! Every ChatCluster has its own fleet: its `spec.redis` and the
//! `internalSecret` of its `spec.secretName` make a [`FleetConfig`], and a
//! [`FleetConnector`] turns that into a [`Fleet`]. The real connector keeps
//! one Redis connection per distinct set of URLs, so clusters that share a
//! Redis share a connection and nothing is reconnected per reconcile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_store::{RedisAccess, RedisStore, ServerHealth, Store, StoreConfig};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

#[async_trait]
pub trait Fleet: Send + Sync + 'static {
    /// Health of every chat server that reports to this Redis.
    async fn servers(&self) -> Result<Vec<ServerHealth>, FleetError>;
    /// Asks the chat server at `address` (`ip:port`) to drain.
    async fn request_drain(&self, address: &str) -> Result<(), FleetError>;
    /// Replaces the registered chat servers of `cluster` (`namespace/name`).
    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> Result<(), FleetError>;
}

/// Where one ChatCluster's chat servers are reached: read from its spec and
/// its Secrets on every reconcile, so a rotated secret or a moved Redis is
/// picked up without restarting the operator.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FleetConfig {
    pub redis_urls: Vec<String>,
    /// Authenticates drain requests (`x-chat-internal-secret`).
    pub internal_secret: String,
    /// PEM CAs of the Redis nodes' certificates (`spec.redis.tls`).
    pub redis_ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key for mutual TLS with Redis.
    pub redis_client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

/// `urls` with any userinfo (`user:password@`) replaced.
fn redacted_urls(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}<redacted>@{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.clone(),
        })
        .collect()
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            // URLs may carry a password (redis://:<password>@host).
            .field("redis_urls", &redacted_urls(&self.redis_urls))
            .field("internal_secret", &"<redacted>")
            .field("redis_ca_pem", &self.redis_ca_pem.is_some())
            .field("redis_client_cert", &self.redis_client_cert.is_some())
            .finish()
    }
}

/// Turns a [`FleetConfig`] into a [`Fleet`].
#[async_trait]
pub trait FleetConnector: Send + Sync + 'static {
    async fn connect(&self, config: &FleetConfig) -> Result<Arc<dyn Fleet>, FleetError>;
}

/// Longest wait for one Redis connection or one drain request; a reconcile
/// must not hang on an unreachable Redis or pod.
pub const FLEET_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The real connector: one Redis Cluster connection per set of seed URLs
/// and TLS files (a rotated CA or client certificate makes a new one).
/// What a Redis connection is made from: seed URLs, CA, client certificate.
type StoreKey = (Vec<String>, Option<Vec<u8>>, Option<(Vec<u8>, Vec<u8>)>);

pub struct RedisFleetConnector {
    stores: tokio::sync::Mutex<HashMap<StoreKey, Arc<dyn Store>>>,
    http: reqwest::Client,
}

impl Default for RedisFleetConnector {
    fn default() -> Self {
        RedisFleetConnector {
            stores: tokio::sync::Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(FLEET_CALL_TIMEOUT)
                .build()
                .expect("a plain HTTP client builds"),
        }
    }
}

#[async_trait]
impl FleetConnector for RedisFleetConnector {
    async fn connect(&self, config: &FleetConfig) -> Result<Arc<dyn Fleet>, FleetError> {
        let key: StoreKey = (
            config.redis_urls.clone(),
            config.redis_ca_pem.clone(),
            config.redis_client_cert.clone(),
        );
        let cached = self.stores.lock().await.get(&key).cloned();
        let store = match cached {
            Some(store) => store,
            None => {
                // Not under the lock: an unreachable Redis (up to the
                // timeout) must not hold up the clusters on other ones.
                let store: Arc<dyn Store> = Arc::new(
                    tokio::time::timeout(
                        FLEET_CALL_TIMEOUT,
                        RedisStore::connect_with(
                            &config.redis_urls,
                            StoreConfig::default(),
                            &RedisAccess {
                                ca_pem: config.redis_ca_pem.clone(),
                                client_cert: config.redis_client_cert.clone().map(
                                    |(client_cert, client_key)| chat_store::ClientTlsConfig {
                                        client_cert,
                                        client_key,
                                    },
                                ),
                                ..RedisAccess::default()
                            },
                        ),
                    )
                    .await
                    .map_err(|_| FleetError("connecting to Redis: timed out".into()))?
                    .map_err(|e| FleetError(format!("connecting to Redis: {e}")))?,
                );
                // Two reconciles may have connected at once: keep the first.
                self.stores.lock().await.entry(key).or_insert(store).clone()
            }
        };
        Ok(Arc::new(RedisFleet {
            store,
            http: self.http.clone(),
            internal_secret: config.internal_secret.clone(),
        }))
    }
}

pub struct RedisFleet {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    internal_secret: String,
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = chat_store::StoreResult<T>>,
) -> Result<T, FleetError> {
    tokio::time::timeout(FLEET_CALL_TIMEOUT, call)
        .await
        .map_err(|_| FleetError(format!("{what}: Redis timed out")))?
        .map_err(|e| FleetError(format!("{what}: {e}")))
}

#[async_trait]
impl Fleet for RedisFleet {
    async fn servers(&self) -> Result<Vec<ServerHealth>, FleetError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        bounded("reading chat server health", self.store.servers(now))
            .await
            .map(|list| list.into_iter().map(|s| s.health).collect())
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
        bounded(
            "registering endpoints",
            self.store.set_registered(cluster, server_ids),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords_in_redis_urls() {
        let config = FleetConfig {
            redis_urls: vec![
                "redis://:s3cret@chat-redis-0.chat-redis:6379".into(),
                "rediss://user:pw@10.0.0.1:6380".into(),
                "redis://plain:6379".into(),
            ],
            internal_secret: "internal".into(),
            redis_ca_pem: None,
            redis_client_cert: None,
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret") && !text.contains("pw@") && !text.contains("internal\""));
        assert!(
            text.contains("redis://<redacted>@chat-redis-0.chat-redis:6379"),
            "{text}"
        );
        assert!(text.contains("redis://plain:6379"), "{text}");
    }
}
