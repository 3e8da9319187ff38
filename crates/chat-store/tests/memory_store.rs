//! The conformance suite against the in-memory store.

use std::sync::Arc;

use chat_store::conformance::SharedStore;
use chat_store::{MemoryStore, StoreConfig};

async fn make(config: StoreConfig) -> Option<SharedStore> {
    Some(Arc::new(MemoryStore::new(config)))
}

chat_store::store_conformance_tests!(make);
