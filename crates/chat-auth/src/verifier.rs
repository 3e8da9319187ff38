//! [`TokenVerifier`]: checks a user token against the configured keys.
//!
//! What is verified, in order:
//! 1. The header's `alg` is HS256, RS256 or ES256; anything else (`none`
//!    included) is refused before any key is looked at.
//! 2. The key: the one(s) whose `kid` the token names; for a token without
//!    `kid`, or with one we do not know, the keys without a kid (the HS256
//!    secret, PEM files). A token whose `kid` is unknown also asks the JWKS
//!    for a refresh, so a rotated-in key is found within seconds.
//! 3. The key's algorithm, which came from the key (see [`crate::keys`]),
//!    must equal the header's. A token naming an RS256 key with `alg: ES256`,
//!    or an HS256 token where only public keys are configured, is refused;
//!    an HS256 token is only ever checked against the HS256 secret.
//! 4. The signature (`jsonwebtoken`, constant-time for HMAC), then `iss` and
//!    `aud` when configured (both then required).
//! 5. `exp` (required) and `nbf` (when present) against the caller's clock
//!    with the leeway, and `sub` as a valid user id.
//!
//! Everything is synchronous and local: the JWKS is fetched in the
//! background ([`crate::jwks`]) and read here through an `Arc` snapshot.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::jwt::Claims;
use crate::{unb64, AuthError, JwksSource, KeyError, VerifyingKey};

/// Claim checks beyond the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimChecks {
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (a token's `aud` must name one); empty: `aud`
    /// is not checked.
    pub audiences: Vec<String>,
    /// Accepted clock skew on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

/// The algorithms a token may name.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

pub struct TokenVerifier {
    /// Keys from the secret and PEM files, fixed at startup.
    keys: Vec<VerifyingKey>,
    jwks: Option<JwksSource>,
    checks: ClaimChecks,
    /// `jsonwebtoken`'s checks for each of [`ALGORITHMS`]: algorithm,
    /// signature, `iss`, `aud`. Time is checked here, against the caller's
    /// clock.
    validations: [Validation; 3],
}

/// The header fields we read before choosing a key.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims, plus `nbf`, which [`Claims`] does not carry.
#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    nbf: Option<u64>,
}

impl TokenVerifier {
    /// `keys` (the HS256 secret, PEM files) and the JWKS, if any. At least
    /// one of them is needed.
    pub fn new(
        keys: Vec<VerifyingKey>,
        jwks: Option<JwksSource>,
        checks: ClaimChecks,
    ) -> Result<Self, KeyError> {
        if keys.is_empty() && jwks.is_none() {
            return Err(KeyError::NoKeys);
        }
        let validations = ALGORITHMS.map(|alg| validation(alg, &checks));
        Ok(TokenVerifier {
            keys,
            jwks,
            checks,
            validations,
        })
    }

    /// HS256 with one secret, no issuer or audience checks.
    pub fn hs256(secret: &[u8], leeway_s: u64) -> Result<Self, KeyError> {
        Self::new(
            vec![VerifyingKey::hs256(secret)?],
            None,
            ClaimChecks {
                leeway_s,
                ..ClaimChecks::default()
            },
        )
    }

    pub fn jwks(&self) -> Option<&JwksSource> {
        self.jwks.as_ref()
    }

    /// `Err` (the reason) while a configured JWKS has never been loaded:
    /// tokens of its keys cannot be verified yet.
    pub fn ready(&self) -> Result<(), String> {
        let Some(jwks) = &self.jwks else {
            return Ok(());
        };
        let status = jwks.status();
        if status.fetches_ok > 0 {
            return Ok(());
        }
        Err(format!(
            "the JWKS at {} is not loaded yet{}",
            jwks.url(),
            status
                .last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ))
    }

    /// Verifies `token` at time `now_s` (seconds since the epoch) and
    /// returns its claims.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        let header = parse_header(token)?;
        let alg = match header.alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(AuthError::Algorithm),
        };
        let jwks_keys = self.jwks.as_ref().map(JwksSource::keys);
        let all = || {
            self.keys
                .iter()
                .chain(jwks_keys.iter().flat_map(|keys| keys.iter()))
        };
        let kid = header.kid.as_deref();
        let mut candidates: Vec<&VerifyingKey> = match kid {
            Some(kid) => all().filter(|k| k.kid() == Some(kid)).collect(),
            None => all().collect(),
        };
        let kid_known = kid.is_none() || !candidates.is_empty();
        if !kid_known {
            // A JWKS never holds HS256 keys: only other algorithms may be
            // in a rotated-in key set.
            if let (Some(jwks), false) = (&self.jwks, alg == Algorithm::HS256) {
                jwks.request_refresh();
            }
            candidates = all().filter(|k| k.kid().is_none()).collect();
        }
        candidates.retain(|k| k.algorithm() == alg);
        if candidates.is_empty() {
            return Err(if kid_known {
                AuthError::Algorithm
            } else {
                AuthError::UnknownKey
            });
        }
        let validation = self
            .validations
            .iter()
            .find(|v| v.algorithms == [alg])
            .expect("a validation for each of ALGORITHMS");
        let mut refusal = AuthError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Payload>(token, key.decoding_key(), validation) {
                Ok(data) => return self.check_payload(data.claims, now_s),
                // Another key (same kid, or kid-less) may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                // Anything else is about the token, not the key.
                Err(e) => {
                    refusal = refusal_of(e.kind());
                    break;
                }
            }
        }
        Err(refusal)
    }

    fn check_payload(&self, payload: Payload, now_s: u64) -> Result<Claims, AuthError> {
        let leeway_s = self.checks.leeway_s;
        if payload.claims.exp.saturating_add(leeway_s) <= now_s {
            return Err(AuthError::Expired);
        }
        if payload
            .nbf
            .is_some_and(|nbf| nbf > now_s.saturating_add(leeway_s))
        {
            return Err(AuthError::NotYetValid);
        }
        if !chat_protocol::ids::is_valid_user_id(&payload.claims.sub) {
            return Err(AuthError::Subject);
        }
        Ok(payload.claims)
    }
}

fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    unb64(header)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(AuthError::Malformed)
}

fn validation(alg: Algorithm, checks: &ClaimChecks) -> Validation {
    let mut v = Validation::new(alg);
    // Time is ours (`check_payload`): against the caller's clock, `exp`
    // required by the type of `Claims`.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    if !checks.issuers.is_empty() {
        v.set_issuer(&checks.issuers);
        v.required_spec_claims.insert("iss".to_owned());
    }
    if checks.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&checks.audiences);
        v.required_spec_claims.insert("aud".to_owned());
    }
    v
}

fn refusal_of(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::Audience,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;
    use crate::b64;
    use crate::jwt::{mint, SERVICE_SCOPE};

    const RSA_A_KEY: &[u8] = include_bytes!("../tests/keys/rsa-a.key.pem");
    const RSA_A_PUB: &[u8] = include_bytes!("../tests/keys/rsa-a.pub.pem");
    const RSA_B_KEY: &[u8] = include_bytes!("../tests/keys/rsa-b.key.pem");
    const EC_A_KEY: &[u8] = include_bytes!("../tests/keys/ec-a.key.pem");
    const EC_A_PUB: &[u8] = include_bytes!("../tests/keys/ec-a.pub.pem");
    const EC_B_KEY: &[u8] = include_bytes!("../tests/keys/ec-b.key.pem");
    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_000;

    fn claims(sub: &str, exp: u64) -> Value {
        json!({ "sub": sub, "exp": exp, "iat": NOW })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, private_pem: &[u8], claims: &Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem).unwrap(),
            _ => EncodingKey::from_secret(private_pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, None, RSA_A_KEY, claims)
    }

    fn es256(claims: &Value) -> String {
        sign(Algorithm::ES256, None, EC_A_KEY, claims)
    }

    /// A token with a header and claims of our choosing and any signature.
    fn forge(header: Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    fn rsa_a() -> VerifyingKey {
        VerifyingKey::from_public_pem(RSA_A_PUB, "rsa-a.pub.pem").unwrap()
    }

    fn ec_a() -> VerifyingKey {
        VerifyingKey::from_public_pem(EC_A_PUB, "ec-a.pub.pem").unwrap()
    }

    fn verifier(keys: Vec<VerifyingKey>) -> TokenVerifier {
        verifier_with(keys, ClaimChecks::default())
    }

    fn verifier_with(keys: Vec<VerifyingKey>, checks: ClaimChecks) -> TokenVerifier {
        TokenVerifier::new(keys, None, checks).unwrap()
    }

    /// The secret, an RSA and an EC key, all without kid.
    fn all_kinds() -> TokenVerifier {
        verifier(vec![VerifyingKey::hs256(SECRET).unwrap(), rsa_a(), ec_a()])
    }

    #[test]
    fn hs256_rs256_and_es256_tokens_are_accepted() {
        let v = all_kinds();
        let hs = mint(
            SECRET,
            &Claims {
                sub: "alice".into(),
                exp: 2000,
                iat: None,
                scope: None,
            },
        );
        for token in [
            hs,
            rs256(&claims("alice", 2000)),
            es256(&claims("alice", 2000)),
        ] {
            let got = v.verify(&token, NOW).unwrap();
            assert_eq!((got.sub.as_str(), got.exp), ("alice", 2000));
            assert!(!got.is_service());
        }
    }

    #[test]
    fn the_service_scope_is_preserved() {
        let v = all_kinds();
        let mut c = claims("backend", 2000);
        c["scope"] = json!(SERVICE_SCOPE);
        for token in [
            rs256(&c),
            es256(&c),
            sign(Algorithm::HS256, None, SECRET, &c),
        ] {
            assert!(v.verify(&token, NOW).unwrap().is_service());
        }
    }

    #[test]
    fn tokens_signed_by_other_keys_are_refused() {
        let v = all_kinds();
        let c = claims("alice", 2000);
        for token in [
            sign(Algorithm::RS256, None, RSA_B_KEY, &c),
            sign(Algorithm::ES256, None, EC_B_KEY, &c),
            sign(Algorithm::HS256, None, b"other-secret", &c),
        ] {
            assert_eq!(v.verify(&token, NOW), Err(AuthError::Signature));
        }
        // A valid signature over other claims.
        let good = rs256(&c);
        let evil = forge(
            json!({"alg": "RS256", "typ": "JWT"}),
            &claims("mallory", 2000),
            good.rsplit('.').next().unwrap(),
        );
        assert_eq!(v.verify(&evil, NOW), Err(AuthError::Signature));
    }

    #[test]
    fn expiry_is_checked_with_the_leeway_only() {
        let v = verifier_with(
            vec![rsa_a()],
            ClaimChecks {
                leeway_s: 30,
                ..ClaimChecks::default()
            },
        );
        let token = rs256(&claims("alice", 1000));
        assert!(v.verify(&token, 1000).is_ok(), "within the leeway");
        assert!(v.verify(&token, 1029).is_ok());
        assert_eq!(v.verify(&token, 1030), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, 5000), Err(AuthError::Expired));
        let mut early = claims("alice", 5000);
        early["nbf"] = json!(1100);
        let early = rs256(&early);
        assert_eq!(v.verify(&early, 1000), Err(AuthError::NotYetValid));
        assert!(v.verify(&early, 1070).is_ok(), "nbf within the leeway");
    }

    #[test]
    fn alg_none_and_algorithms_we_do_not_take_are_refused() {
        let v = all_kinds();
        let c = claims("alice", 2000);
        for alg in [
            "none", "None", "HS512", "RS512", "PS256", "ES384", "EdDSA", "",
        ] {
            let token = forge(json!({ "alg": alg }), &c, "");
            assert_eq!(v.verify(&token, NOW), Err(AuthError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn a_header_alg_other_than_the_keys_is_refused() {
        // The RSA key is named by kid; the token says ES256 (and is a valid
        // ES256 token of another key).
        let v = verifier(vec![rsa_a().with_kid("rsa"), ec_a().with_kid("ec")]);
        let c = claims("alice", 2000);
        let token = sign(Algorithm::ES256, Some("rsa"), EC_A_KEY, &c);
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Algorithm));
        let token = sign(Algorithm::RS256, Some("ec"), RSA_A_KEY, &c);
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Algorithm));
        // Without kid: only public keys are configured, so no HS256 token is
        // checked at all.
        let only_rsa = verifier(vec![rsa_a()]);
        let token = sign(Algorithm::HS256, None, SECRET, &c);
        assert_eq!(only_rsa.verify(&token, NOW), Err(AuthError::Algorithm));
        assert!(v
            .verify(&sign(Algorithm::RS256, Some("rsa"), RSA_A_KEY, &c), NOW)
            .is_ok());
    }

    #[test]
    fn an_hs256_token_keyed_with_our_public_key_is_refused() {
        // The classic confusion: HMAC-SHA256 with the RSA (or EC) public key
        // file's bytes as the secret, alg HS256.
        let c = claims("mallory", 2000);
        for public in [RSA_A_PUB, EC_A_PUB] {
            let forged = sign(Algorithm::HS256, None, public, &c);
            // Only public keys: no HS256 key exists.
            let v = verifier(vec![rsa_a(), ec_a()]);
            assert_eq!(v.verify(&forged, NOW), Err(AuthError::Algorithm));
            // With a secret too: only the secret is tried, and it differs.
            assert_eq!(all_kinds().verify(&forged, NOW), Err(AuthError::Signature));
        }
    }

    #[test]
    fn an_unknown_kid_is_refused() {
        let v = verifier(vec![rsa_a().with_kid("k1")]);
        let c = claims("alice", 2000);
        assert!(v
            .verify(&sign(Algorithm::RS256, Some("k1"), RSA_A_KEY, &c), NOW)
            .is_ok());
        assert_eq!(
            v.verify(&sign(Algorithm::RS256, Some("k2"), RSA_A_KEY, &c), NOW),
            Err(AuthError::UnknownKey)
        );
        // A key without kid (a PEM file, the secret) is tried for any kid.
        let file = verifier(vec![rsa_a(), VerifyingKey::hs256(SECRET).unwrap()]);
        for token in [
            sign(Algorithm::RS256, Some("k2"), RSA_A_KEY, &c),
            sign(Algorithm::HS256, Some("k2"), SECRET, &c),
        ] {
            assert!(file.verify(&token, NOW).is_ok());
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let v = all_kinds();
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            "e30.e30.e30",
            "...",
            "a.b.c",
        ] {
            assert_eq!(v.verify(token, NOW), Err(AuthError::Malformed), "{token:?}");
        }
        // Signed, but the claims are not ours: no exp, exp not a number, no sub.
        for c in [
            json!({ "sub": "alice" }),
            json!({ "sub": "alice", "exp": "2000" }),
            json!({ "exp": 2000 }),
        ] {
            assert_eq!(v.verify(&rs256(&c), NOW), Err(AuthError::Malformed), "{c}");
        }
        // Garbage signature bytes under a valid header.
        let good = rs256(&claims("alice", 2000));
        let (head, _) = good.rsplit_once('.').unwrap();
        assert!(v.verify(&format!("{head}.!!"), NOW).is_err());
    }

    #[test]
    fn subjects_must_be_user_ids() {
        let v = all_kinds();
        for sub in ["not a user", "auth0|123", ""] {
            assert_eq!(
                v.verify(&es256(&claims(sub, 2000)), NOW),
                Err(AuthError::Subject),
                "{sub:?}"
            );
        }
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let v = verifier_with(
            vec![rsa_a()],
            ClaimChecks {
                issuers: vec!["https://idp.example".into()],
                audiences: vec!["chat".into()],
                leeway_s: 0,
            },
        );
        let with = |iss: Option<&str>, aud: Option<Value>| {
            let mut c = claims("alice", 2000);
            if let Some(iss) = iss {
                c["iss"] = json!(iss);
            }
            if let Some(aud) = aud {
                c["aud"] = aud;
            }
            v.verify(&rs256(&c), NOW)
        };
        let idp = Some("https://idp.example");
        assert!(with(idp, Some(json!("chat"))).is_ok());
        assert!(with(idp, Some(json!(["other", "chat"]))).is_ok());
        assert_eq!(with(None, Some(json!("chat"))), Err(AuthError::Issuer));
        assert_eq!(
            with(Some("https://evil.example"), Some(json!("chat"))),
            Err(AuthError::Issuer)
        );
        assert_eq!(with(idp, None), Err(AuthError::Audience));
        assert_eq!(with(idp, Some(json!("other"))), Err(AuthError::Audience));
        // Not configured: not checked (HS256 tokens of existing backends
        // keep working whatever they carry).
        let plain = verifier(vec![rsa_a()]);
        let mut c = claims("alice", 2000);
        c["iss"] = json!("anyone");
        c["aud"] = json!("anything");
        assert!(plain.verify(&rs256(&c), NOW).is_ok());
    }

    #[test]
    fn a_verifier_needs_a_key() {
        assert!(matches!(
            TokenVerifier::new(Vec::new(), None, ClaimChecks::default()),
            Err(KeyError::NoKeys)
        ));
        assert!(matches!(
            TokenVerifier::hs256(b"", 0),
            Err(KeyError::EmptySecret)
        ));
    }
}
