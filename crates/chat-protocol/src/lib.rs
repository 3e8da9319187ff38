//! Wire types of the public client contract (`shared/PROTOCOL.md`).
//!
//! Everything a client can send or receive is defined here, once: the REST
//! bodies ([`rest`]), the WebSocket frames and their parser ([`frame`]), the
//! error codes ([`error`]) and the limits that bound them ([`limits`]). The
//! servers hold no protocol logic of their own, so this crate's unit tests
//! are the contract's executable form.

pub mod error;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod rest;

pub use error::ErrorCode;
pub use frame::{ClientFrame, FrameError, ServerFrame};
pub use limits::Limits;
pub use rest::Message;

/// Milliseconds since the Unix epoch, the contract's only time format.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
