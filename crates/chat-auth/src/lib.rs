//! Credentials of the chat service.
//!
//! - [`jwt`]: the long-lived user token, a JWT signed with HS256. Minted by
//!   the application's backend (or `/v1/auth/token` in development), checked
//!   by the API server.
//! - [`ticket`]: the short-lived WebSocket ticket from `/v1/connect`, bound
//!   to one user and one chat server, checked by that chat server.
//! - [`origin`]: the browser origins allowed to call the API and open
//!   WebSockets.
//!
//! Both are HMAC-SHA256 over base64url segments, implemented here on `hmac`
//! and `sha2` rather than a JWT crate: the algorithm is pinned by
//! construction (no `alg` negotiation, so no `none` and no key confusion) and
//! signatures are compared in constant time by `Mac::verify_slice`.

pub mod jwt;
pub mod origin;
pub mod ticket;

pub use origin::AllowedOrigins;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn sign(secret: &[u8], signing_input: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input);
    mac.finalize().into_bytes().to_vec()
}

fn verify(secret: &[u8], signing_input: &[u8], signature: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input);
    mac.verify_slice(signature).is_ok()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("invalid subject")]
    Subject,
    #[error("ticket is for another chat server")]
    WrongServer,
}
