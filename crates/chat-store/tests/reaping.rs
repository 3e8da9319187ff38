//! Reaping dead chat servers, in a test binary of its own: it reaps every
//! server without a health record, including the made-up servers of the
//! conformance scenarios, which run in parallel in their own binaries.

#[path = "support/redis.rs"]
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_reaps_dead_servers_once() {
    let store: chat_store::conformance::SharedStore =
        std::sync::Arc::new(chat_store::MemoryStore::default());
    chat_store::conformance::dead_servers_are_reaped_once(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_reaps_dead_servers_once() {
    if let Some(store) = support::make(chat_store::StoreConfig::default()).await {
        chat_store::conformance::dead_servers_are_reaped_once(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_reaps_a_silent_server_before_its_record_expires() {
    let store: chat_store::conformance::SharedStore =
        std::sync::Arc::new(chat_store::MemoryStore::default());
    chat_store::conformance::a_silent_server_is_reaped_before_its_record_expires(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_reaps_a_silent_server_before_its_record_expires() {
    if let Some(store) = support::make(chat_store::StoreConfig::default()).await {
        chat_store::conformance::a_silent_server_is_reaped_before_its_record_expires(store).await;
    }
}
