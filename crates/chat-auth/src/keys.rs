//! The keys a user token may be signed with.
//!
//! Every key carries the one algorithm it verifies, derived from the key
//! itself: an HMAC secret is HS256, an RSA public key RS256, an EC P-256
//! public key ES256. The token's header never chooses the algorithm; it can
//! only name it, and a token naming another algorithm than its key's is
//! refused (see [`crate::verifier`]). That is what closes `alg: none` and the
//! classic confusion of an HS256 token "signed" with our RSA public key as
//! the HMAC secret: no HS256 key is ever made from public key material.
//!
//! Keys are checked when they are loaded (a private key, a certificate, a
//! curve other than P-256, an RSA modulus under 2048 bits, a JWKS's shared
//! secret are refused with a reason), so the request path never meets a key
//! it cannot use.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The shortest RSA modulus loaded, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A key that verifies tokens of exactly one algorithm.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// Where the key came from, for errors and logs: `--jwt-secret`, a file
    /// name, `JWKS kid=...`. Never key material.
    origin: String,
}

/// A key that cannot be loaded, or a token configuration without keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the HS256 secret is empty")]
    EmptySecret,
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {reason}")]
    Unsupported { origin: String, reason: String },
    #[error("JWKS URL {url:?}: {reason}")]
    JwksUrl { url: String, reason: String },
    #[error("no token keys: configure an HS256 secret, public key files or a JWKS URL")]
    NoKeys,
}

impl VerifyingKey {
    /// The shared secret of HS256 tokens (`--jwt-secret`).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::EmptySecret)?;
        Ok(VerifyingKey {
            kid: None,
            alg: Algorithm::HS256,
            key,
            origin: "the HS256 secret".to_owned(),
        })
    }

    /// A public key file (`--jwt-public-key-file`): one PEM public key,
    /// RSA (`PUBLIC KEY` or `RSA PUBLIC KEY`) or EC P-256 (`PUBLIC KEY`).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_public_pem(&pem, &path.display().to_string())
    }

    /// One PEM public key; `origin` names it in errors. The algorithm is
    /// the key type's: RS256 for RSA, ES256 for EC P-256.
    pub fn from_public_pem(pem: &[u8], origin: &str) -> Result<Self, KeyError> {
        let unsupported = |reason: &str| KeyError::Unsupported {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let text = std::str::from_utf8(pem).map_err(|_| unsupported("not a PEM file"))?;
        if text.matches("-----BEGIN ").count() > 1 {
            return Err(unsupported(
                "more than one PEM block: give one public key per file",
            ));
        }
        let label = pem_label(text).ok_or_else(|| unsupported("not a PEM file"))?;
        let (key, alg) = match label {
            "PUBLIC KEY" => match DecodingKey::from_ec_pem(pem) {
                Ok(key) => (key, Algorithm::ES256),
                Err(_) => (
                    DecodingKey::from_rsa_pem(pem)
                        .map_err(|_| unsupported("a public key that is neither RSA nor EC"))?,
                    Algorithm::RS256,
                ),
            },
            "RSA PUBLIC KEY" => (
                DecodingKey::from_rsa_pem(pem).map_err(|_| unsupported("unreadable RSA key"))?,
                Algorithm::RS256,
            ),
            label if label.contains("PRIVATE KEY") => {
                return Err(unsupported(
                    "a private key: give its public half (openssl pkey -in KEY -pubout)",
                ))
            }
            "CERTIFICATE" => {
                return Err(unsupported(
                    "a certificate: give its public key (openssl x509 -in CERT -pubkey -noout)",
                ))
            }
            _ => return Err(unsupported(&format!("unsupported PEM block {label:?}"))),
        };
        check(&key, alg).map_err(|reason| unsupported(&reason))?;
        Ok(VerifyingKey {
            kid: None,
            alg,
            key,
            origin: origin.to_owned(),
        })
    }

    /// One key of a JWKS: RSA (`alg` RS256 or absent) or EC P-256 (`alg`
    /// ES256 or absent). Shared secrets (`kty: oct`), encryption keys and
    /// other algorithms are refused: the caller skips them.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let kid = jwk.common.key_id.clone();
        let origin = format!("JWKS kid={}", kid.as_deref().unwrap_or("(none)"));
        let unsupported = |reason: String| KeyError::Unsupported {
            origin: origin.clone(),
            reason,
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(unsupported("an encryption key (use: enc)".into()));
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::OctetKey(_), _) => {
                return Err(unsupported(
                    "a shared secret (kty: oct) is never taken from a JWKS".into(),
                ))
            }
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (_, alg) => {
                return Err(unsupported(format!(
                    "not an RS256 or ES256 (P-256) key (alg {})",
                    alg.map_or("absent".to_owned(), |a| a.to_string())
                )))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| unsupported(e.to_string()))?;
        check(&key, alg).map_err(unsupported)?;
        Ok(VerifyingKey {
            kid,
            alg,
            key,
            origin,
        })
    }

    /// The same key, named by `kid`: a token naming another kid is not
    /// checked against it.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Where the key came from (for logs; no key material).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// The label of the first PEM block: `PUBLIC KEY` in
/// `-----BEGIN PUBLIC KEY-----`.
fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

/// Whether `key` is usable for `alg`: an RSA modulus of at least
/// [`MIN_RSA_BITS`], a point on P-256.
fn check(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    match alg {
        Algorithm::RS256 => {
            let jwk = Jwk::from_decoding_key(key, None)
                .map_err(|e| format!("unreadable RSA public key ({e})"))?;
            let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
                return Err("not an RSA key".into());
            };
            let n = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|_| "unreadable RSA modulus".to_owned())?;
            let bits = modulus_bits(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"
                ));
            }
            Ok(())
        }
        Algorithm::ES256 => {
            // An uncompressed P-256 point is 65 bytes (P-384's is 97).
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(65) {
                return Err("an EC key on another curve than P-256 (only ES256 is taken)".into());
            }
            // Building a verifier parses the point; a bad signature is `Ok(false)`,
            // a key that is no point on the curve an error.
            jsonwebtoken::crypto::verify("", b"", key, Algorithm::ES256)
                .map(|_| ())
                .map_err(|_| "not a point on P-256".to_owned())
        }
        _ => Err(format!("{alg:?} keys are not taken")),
    }
}

fn modulus_bits(n: &[u8]) -> usize {
    let n = &n[n.iter().take_while(|b| **b == 0).count()..];
    match n.first() {
        None => 0,
        Some(first) => (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PUB: &[u8] = include_bytes!("../tests/keys/rsa-a.pub.pem");
    const RSA_KEY: &[u8] = include_bytes!("../tests/keys/rsa-a.key.pem");
    const EC_PUB: &[u8] = include_bytes!("../tests/keys/ec-a.pub.pem");
    const EC_P384_PUB: &[u8] = include_bytes!("../tests/keys/ec-p384.pub.pem");
    const RSA_1024_PUB: &[u8] = include_bytes!("../tests/keys/rsa-1024.pub.pem");

    fn refusal(pem: &[u8]) -> String {
        VerifyingKey::from_public_pem(pem, "test.pem")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_algorithm_comes_from_the_key_type() {
        let rsa = VerifyingKey::from_public_pem(RSA_PUB, "rsa.pem").unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        assert_eq!(rsa.kid(), None);
        let ec = VerifyingKey::from_public_pem(EC_PUB, "ec.pem").unwrap();
        assert_eq!(ec.algorithm(), Algorithm::ES256);
        assert_eq!(
            VerifyingKey::hs256(b"s").unwrap().algorithm(),
            Algorithm::HS256
        );
    }

    #[test]
    fn unusable_key_files_are_refused_with_a_reason() {
        assert!(refusal(RSA_KEY).contains("private key"));
        assert!(refusal(EC_P384_PUB).contains("P-256"));
        assert!(refusal(RSA_1024_PUB).contains("1024 bits"));
        assert!(refusal(b"hello").contains("not a PEM file"));
        let two = [RSA_PUB, EC_PUB].concat();
        assert!(refusal(&two).contains("one public key per file"));
        assert!(matches!(
            VerifyingKey::hs256(b""),
            Err(KeyError::EmptySecret)
        ));
        let missing = VerifyingKey::from_pem_file(Path::new("/nonexistent/key.pem"));
        assert!(matches!(missing, Err(KeyError::Io { .. })));
    }

    #[test]
    fn jwks_keys_take_their_kid_and_refuse_secrets_and_other_algorithms() {
        let rsa = DecodingKey::from_rsa_pem(RSA_PUB).unwrap();
        let mut jwk = Jwk::from_decoding_key(&rsa, Some(Algorithm::RS256)).unwrap();
        jwk.common.key_id = Some("k1".into());
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!((key.kid(), key.algorithm()), (Some("k1"), Algorithm::RS256));

        jwk.common.key_algorithm = Some(KeyAlgorithm::PS256);
        assert!(VerifyingKey::from_jwk(&jwk).is_err(), "PS256 is not taken");
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        assert!(
            VerifyingKey::from_jwk(&jwk).is_err(),
            "an RSA key is not ES256"
        );
        jwk.common.key_algorithm = None;
        jwk.common.public_key_use = Some(PublicKeyUse::Encryption);
        assert!(VerifyingKey::from_jwk(&jwk).is_err(), "encryption keys");

        let secret: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "kid": "s", "alg": "HS256", "k": "c2VjcmV0"
        }))
        .unwrap();
        let refused = VerifyingKey::from_jwk(&secret).unwrap_err().to_string();
        assert!(refused.contains("shared secret"), "{refused}");

        let ec = DecodingKey::from_ec_pem(EC_PUB).unwrap();
        let jwk = Jwk::from_decoding_key(&ec, None).unwrap();
        assert_eq!(
            VerifyingKey::from_jwk(&jwk).unwrap().algorithm(),
            Algorithm::ES256
        );
    }
}
