//! User tokens: JWTs (`base64url(header).base64url(claims).base64url(sig)`)
//! with the claims below. Verification, for every algorithm and key source,
//! is [`TokenVerifier`]'s; this module has the claims and the HS256 minting
//! of development tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{AuthError, TokenVerifier};

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

/// Signs claims with HS256: development tokens (`/v1/auth/token`) and
/// tests. Production tokens come from the application's backend or an
/// identity provider.
///
/// # Panics
/// On an empty secret, which the API server refuses at startup.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let key = EncodingKey::from_secret(secret).expect("the HS256 secret is not empty");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .expect("HS256 signing of serialisable claims cannot fail")
}

/// Verifies an HS256 token against one secret and returns its claims:
/// [`TokenVerifier::verify`] with only that secret. `now_s` is the current
/// time in seconds; `leeway_s` bounds accepted clock skew on `exp`.
pub fn verify_token(
    secret: &[u8],
    token: &str,
    now_s: u64,
    leeway_s: u64,
) -> Result<Claims, AuthError> {
    TokenVerifier::hs256(secret, leeway_s)
        .map_err(|_| AuthError::Signature)?
        .verify(token, now_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;

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
