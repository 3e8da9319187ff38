//! JWT HS256 user tokens: `base64url(header).base64url(claims).base64url(sig)`.

use serde::{Deserialize, Serialize};

use crate::{b64, sign, unb64, verify, AuthError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Expiry, seconds since the epoch (RFC 7519 NumericDate).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// `"service"` for an application backend's token (contract v1.1);
    /// absent for a user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The `scope` claim of a service token.
pub const SERVICE_SCOPE: &str = "service";

impl Claims {
    pub fn is_service(&self) -> bool {
        self.scope.as_deref() == Some(SERVICE_SCOPE)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs claims with HS256.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64(&serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{header}.{payload}");
    let signature = b64(&sign(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Verifies an HS256 token and returns its claims. `now_s` is the current
/// time in seconds; `leeway_s` bounds accepted clock skew on `exp`.
pub fn verify_token(
    secret: &[u8],
    token: &str,
    now_s: u64,
    leeway_s: u64,
) -> Result<Claims, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = unb64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    // Pinned: anything but HS256 (including "none") is refused before the
    // signature is even looked at.
    if header.alg != "HS256" {
        return Err(AuthError::Algorithm);
    }
    let signature = unb64(s).ok_or(AuthError::Malformed)?;
    let signing_input_len = h.len() + 1 + p.len();
    if !verify(secret, &token.as_bytes()[..signing_input_len], &signature) {
        return Err(AuthError::Signature);
    }
    let claims: Claims = unb64(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    if claims.exp.saturating_add(leeway_s) <= now_s {
        return Err(AuthError::Expired);
    }
    if !chat_protocol::ids::is_valid_user_id(&claims.sub) {
        return Err(AuthError::Subject);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            iat: None,
            scope: None,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint(SECRET, &claims(2000));
        assert_eq!(verify_token(SECRET, &token, 1000, 0).unwrap().sub, "alice");
    }

    #[test]
    fn expired_tokens_are_refused_within_the_leeway_only() {
        let token = mint(SECRET, &claims(1000));
        assert_eq!(
            verify_token(SECRET, &token, 1000, 0),
            Err(AuthError::Expired)
        );
        assert!(verify_token(SECRET, &token, 1020, 30).is_ok());
        assert_eq!(
            verify_token(SECRET, &token, 1031, 30),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let token = mint(b"other-secret", &claims(2000));
        assert_eq!(
            verify_token(SECRET, &token, 1000, 0),
            Err(AuthError::Signature)
        );
        let good = mint(SECRET, &claims(2000));
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = b64(br#"{"sub":"mallory","exp":2000}"#);
        parts[1] = &evil;
        assert_eq!(
            verify_token(SECRET, &parts.join("."), 1000, 0),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let payload = b64(br#"{"sub":"alice","exp":2000}"#);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
        ] {
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert_eq!(
                verify_token(SECRET, &token, 1000, 0),
                Err(AuthError::Algorithm)
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for token in ["", "a", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(verify_token(SECRET, token, 1000, 0).is_err(), "{token}");
        }
    }

    #[test]
    fn invalid_subjects_are_refused() {
        let token = mint(
            SECRET,
            &Claims {
                sub: "not a user id".into(),
                exp: 2000,
                iat: None,
                scope: None,
            },
        );
        assert_eq!(
            verify_token(SECRET, &token, 1000, 0),
            Err(AuthError::Subject)
        );
    }
}
