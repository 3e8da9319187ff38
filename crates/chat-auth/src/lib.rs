//! Credentials of the chat service.
//!
//! - [`jwt`]: the long-lived user token, a JWT. Minted by the application's
//!   backend or an identity provider (or `/v1/auth/token` in development,
//!   HS256), checked by the API server with a [`TokenVerifier`].
//! - [`keys`]: the keys a token may be signed with (an HS256 secret, RSA or
//!   EC P-256 public keys from PEM files or a JWKS), each pinned to one
//!   algorithm.
//! - [`jwks`]: a JWKS URL's key set, fetched in the background, cached and
//!   refreshed, so an identity provider can rotate its keys.
//! - [`ticket`]: the short-lived WebSocket ticket from `/v1/connect`, bound
//!   to one user and one chat server, checked by that chat server.
//! - [`origin`]: the browser origins allowed to call the API and open
//!   WebSockets.
//!
//! Tokens are JWTs from other parties, so they are verified with the
//! `jsonwebtoken` crate, with the algorithm always taken from the key, never
//! from the token (see [`verifier`]). Tickets go only between our own
//! processes and are not JWTs: HMAC-SHA256 over a base64url payload,
//! implemented here on `hmac` and `sha2` (one algorithm by construction,
//! signatures compared in constant time by `Mac::verify_slice`).

pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod origin;
pub mod ticket;
pub mod verifier;

pub use jwks::{JwksConfig, JwksSource, JwksStatus};
pub use keys::{KeyError, VerifyingKey};
pub use origin::AllowedOrigins;
pub use verifier::{ClaimChecks, TokenVerifier};

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

/// Why a token or a ticket was refused. The API server answers every one
/// of them with 401 `unauthorized`, the message naming the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    /// `none`, an algorithm we do not take, or one that differs from the
    /// algorithm of the key the token names.
    #[error("unsupported token algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    /// `nbf` is later than now plus the leeway.
    #[error("not valid yet")]
    NotYetValid,
    #[error("invalid subject")]
    Subject,
    /// The token's `kid` names no key we have (a JWKS refresh is asked for).
    #[error("unknown signing key")]
    UnknownKey,
    /// `iss` is missing or not one of the configured issuers.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` is missing or names none of the configured audiences.
    #[error("wrong audience")]
    Audience,
    #[error("ticket is for another chat server")]
    WrongServer,
}
