//! Connecting the conformance scenarios to the test Redis Cluster: needs
//! `CHAT_TEST_REDIS_URLS`; without it a test passes with a notice, unless
//! `CHAT_TEST_REQUIRE_REDIS=1` makes a missing cluster a failure.

use std::sync::Arc;

use chat_store::conformance::SharedStore;
use chat_store::{RedisStore, StoreConfig};

pub async fn make(config: StoreConfig) -> Option<SharedStore> {
    let urls = match std::env::var("CHAT_TEST_REDIS_URLS") {
        Ok(urls) if !urls.is_empty() => urls,
        _ => {
            assert!(
                std::env::var("CHAT_TEST_REQUIRE_REDIS").as_deref() != Ok("1"),
                "CHAT_TEST_REQUIRE_REDIS=1 but CHAT_TEST_REDIS_URLS is unset: start scripts/redis-cluster.sh"
            );
            eprintln!("skipped: CHAT_TEST_REDIS_URLS is unset (run scripts/test.sh)");
            return None;
        }
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let store = RedisStore::connect(&urls, config)
        .await
        .expect("connect to the Redis Cluster");
    Some(Arc::new(store))
}
