//! Routing, not broadcasting: a stored message goes only to the chat servers
//! that hold sessions of the room's members, over persistent batched links.
//!
//! - [`delivery`]: what travels on a link, and its batch framing.
//! - [`registry`]: the live chat servers, cached from the store's health data.
//! - [`link`]: one persistent WebSocket per target chat server, batching.
//! - [`router`]: members -> sessions -> servers -> deliveries.
//! - [`events`]: read receipts and presence events (contract v1.1), and
//!   the reaper that reports a dead chat server's users offline.
//!
//! Both the API server (REST sends) and the chat servers (WebSocket sends)
//! route with the same [`MessageRouter`]; a chat server short-circuits the
//! deliveries meant for itself.

pub mod delivery;
pub mod events;
pub mod link;
pub mod registry;
pub mod router;

pub use delivery::{Delivery, DeliveryKind};
pub use events::{
    may_have_been_reaped_after, presence_reap_interval, spawn_presence_reaper, FanoutLimits,
};
pub use link::{LinkConfig, LinkPool, INTERNAL_SECRET_HEADER};
pub use registry::{RegistryConfig, ServerRegistry};
pub use router::{LocalDelivery, MessageRouter, Recipients};

/// Constant-time comparison of a presented internal secret with ours.
pub fn secret_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && presented.as_bytes().ct_eq(expected.as_bytes()).into()
}
