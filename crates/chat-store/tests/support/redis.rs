//! Connecting the conformance scenarios to the test Redis Cluster (see
//! `chat_store::conformance::test_redis_urls`: `None` without one, a
//! failure when `CHAT_TEST_REQUIRE_REDIS=1`).

use std::sync::Arc;

use chat_store::conformance::SharedStore;
use chat_store::{RedisStore, StoreConfig};

pub async fn make(config: StoreConfig) -> Option<SharedStore> {
    let urls = chat_store::conformance::test_redis_urls()?;
    let store = RedisStore::connect(&urls, config)
        .await
        .expect("connect to the Redis Cluster");
    Some(Arc::new(store))
}
