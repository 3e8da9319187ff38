//! The conformance suite against the in-memory store.

use std::sync::Arc;

use chat_store::conformance::SharedStore;
use chat_store::{MemoryStore, StoreConfig};

async fn make(config: StoreConfig) -> Option<SharedStore> {
    Some(Arc::new(MemoryStore::new(config)))
}

chat_store::store_conformance_tests!(make);

/// The in-memory store leaves presence audiences to the announcer (a read
/// there costs no round trip).
#[tokio::test]
async fn presence_audiences_are_left_to_the_announcer() {
    let store = make(StoreConfig::default()).await.unwrap();
    let filled =
        chat_store::conformance::presence_audiences_come_with_the_first_session(store).await;
    assert_eq!(filled, 0);
}

#[tokio::test]
async fn presence_audiences_at_close_are_left_to_the_announcer() {
    let store = make(StoreConfig::default()).await.unwrap();
    let filled =
        chat_store::conformance::presence_audiences_come_with_the_last_session(store).await;
    assert_eq!(filled, 0);
}
