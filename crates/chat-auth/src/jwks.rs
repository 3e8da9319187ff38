//! The keys of an identity provider, from its JWKS URL.
//!
//! A background task fetches the key set at once, then every `refresh_s`,
//! and sooner when a token names a `kid` we do not know (the provider
//! rotated in a new key): such a request wakes the task, which fetches no
//! sooner than `min_refresh_s` after its last fetch, so a stream of tokens
//! with made-up kids costs the provider one request per `min_refresh_s` per
//! API server, whatever their number. A failed fetch (unreachable, an HTTP
//! error, not a JWKS, no usable key in it) keeps the last good key set and
//! is retried with a backoff from `min_refresh_s` doubling up to
//! `refresh_s`.
//!
//! The request path only reads: an `Arc` snapshot of the key set behind a
//! `RwLock` held for the clone (std's lock: never held across an await,
//! written once per fetch).

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::{KeyError, VerifyingKey};

/// Where and how often to fetch a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// `https://...` (or `http://` on a trusted network) of the key set.
    pub url: String,
    /// Fetch period, in seconds.
    pub refresh_s: u64,
    /// Shortest time between two fetches, in seconds: the bound on fetches
    /// asked for by unknown kids, and the first retry delay after a failure.
    pub min_refresh_s: u64,
    /// Longest time one fetch may take, in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Largest key set body, in bytes.
    pub max_bytes: usize,
}

impl JwksConfig {
    pub const DEFAULT_REFRESH_S: u64 = 300;
    pub const DEFAULT_MIN_REFRESH_S: u64 = 5;
    pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

    /// `url` with the default intervals and limits.
    pub fn new(url: impl Into<String>) -> Self {
        JwksConfig {
            url: url.into(),
            refresh_s: Self::DEFAULT_REFRESH_S,
            min_refresh_s: Self::DEFAULT_MIN_REFRESH_S,
            fetch_timeout_ms: Self::DEFAULT_FETCH_TIMEOUT_MS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// What the fetches so far did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksStatus {
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    /// Keys in the set in use.
    pub keys: usize,
    /// Why the latest fetch failed; `None` once one succeeds again.
    pub last_error: Option<String>,
}

/// A JWKS kept fresh by a background task; clones share it. The task ends
/// when the last clone is dropped.
#[derive(Clone)]
pub struct JwksSource {
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

struct Shared {
    url: String,
    keys: RwLock<Arc<[VerifyingKey]>>,
    status: watch::Sender<JwksStatus>,
}

impl JwksSource {
    /// Starts fetching `config.url` in the background. Needs a tokio
    /// runtime. Until the first fetch succeeds the set is empty (tokens of
    /// its keys are refused with [`crate::AuthError::UnknownKey`]).
    pub fn spawn(config: JwksConfig) -> Result<Self, KeyError> {
        let bad_url = |reason: String| KeyError::JwksUrl {
            url: config.url.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&config.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad_url("not an http(s) URL".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.fetch_timeout_ms.max(1)))
            .build()
            .map_err(|e| bad_url(format!("no HTTP client: {e}")))?;
        let shared = Arc::new(Shared {
            url: config.url.clone(),
            keys: RwLock::new(Arc::from(Vec::new())),
            status: watch::Sender::new(JwksStatus::default()),
        });
        let wake = Arc::new(Notify::new());
        tokio::spawn(refresh_loop(
            Arc::downgrade(&shared),
            wake.clone(),
            client,
            config,
        ));
        Ok(JwksSource { shared, wake })
    }

    /// The key set in use (empty before the first successful fetch).
    pub fn keys(&self) -> Arc<[VerifyingKey]> {
        self.shared
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks for a fetch (a token named an unknown kid). Cheap and never
    /// blocks; requests made while one is pending are one request.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    pub fn url(&self) -> &str {
        &self.shared.url
    }

    pub fn status(&self) -> JwksStatus {
        self.shared.status.borrow().clone()
    }

    /// Changes of [`JwksStatus`], one per fetch.
    pub fn subscribe(&self) -> watch::Receiver<JwksStatus> {
        self.shared.status.subscribe()
    }
}

async fn refresh_loop(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    client: reqwest::Client,
    config: JwksConfig,
) {
    let refresh = Duration::from_secs(config.refresh_s.max(1));
    let min_refresh = Duration::from_secs(config.min_refresh_s);
    let mut failures: u32 = 0;
    loop {
        let result = fetch(&client, &config).await;
        let fetched_at = Instant::now();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match result {
            Ok(keys) => {
                failures = 0;
                shared.replace(keys);
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                tracing::warn!(url = %config.url, error = %reason,
                    "JWKS fetch failed; keeping the last good key set");
                shared.status.send_modify(|s| {
                    s.fetches_failed += 1;
                    s.last_error = Some(reason);
                });
            }
        }
        drop(shared);
        let next = if failures == 0 {
            refresh
        } else {
            let backoff = min_refresh.max(Duration::from_secs(1));
            backoff
                .saturating_mul(1 << (failures - 1).min(16))
                .min(refresh)
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = wake.notified() => {
                tokio::time::sleep_until(fetched_at + min_refresh).await;
            }
        }
    }
}

impl Shared {
    fn replace(&self, keys: Vec<VerifyingKey>) {
        let kids = |keys: &[VerifyingKey]| -> Vec<String> {
            keys.iter()
                .map(|k| k.kid().unwrap_or("(none)").to_owned())
                .collect()
        };
        let new_kids = kids(&keys);
        let mut slot = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if kids(&slot) != new_kids {
            tracing::info!(url = %self.url, kids = ?new_kids, "JWKS key set loaded");
        }
        *slot = Arc::from(keys);
        let count = slot.len();
        drop(slot);
        self.status.send_modify(|s| {
            s.fetches_ok += 1;
            s.keys = count;
            s.last_error = None;
        });
    }
}

async fn fetch(client: &reqwest::Client, config: &JwksConfig) -> Result<Vec<VerifyingKey>, String> {
    let mut response = client
        .get(&config.url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
    {
        if body.len() + chunk.len() > config.max_bytes {
            return Err(format!("larger than {} bytes", config.max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    parse_jwks(&body)
}

/// The usable keys of a JWKS document; keys we do not take (other
/// algorithms, encryption keys, shared secrets) are skipped. `Err` when
/// none is usable: an empty set is not a rotation we follow.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    #[derive(Deserialize)]
    struct KeySet {
        keys: Vec<serde_json::Value>,
    }
    let set: KeySet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    let mut skipped = Vec::new();
    for value in set.keys {
        match serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("unreadable key: {e}"))
            .and_then(|jwk| VerifyingKey::from_jwk(&jwk).map_err(|e| e.to_string()))
        {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(reason),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(?skipped, "JWKS keys skipped");
    }
    if keys.is_empty() {
        return Err(format!(
            "no usable key (RS256 or ES256); skipped: {skipped:?}"
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey};
    use serde_json::json;

    #[test]
    fn usable_keys_are_kept_and_the_rest_skipped() {
        let rsa = DecodingKey::from_rsa_pem(include_bytes!("../tests/keys/rsa-a.pub.pem")).unwrap();
        let mut jwk = serde_json::to_value(Jwk::from_decoding_key(&rsa, None).unwrap()).unwrap();
        jwk["kid"] = json!("r1");
        let body = json!({ "keys": [
            jwk,
            { "kty": "oct", "kid": "s", "k": "c2VjcmV0" },
            { "kty": "OKP", "crv": "X448", "x": "AAAA" },
            "not even an object",
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid(), keys[0].algorithm()),
            (Some("r1"), Algorithm::RS256)
        );
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[tokio::test]
    async fn only_http_urls_are_taken() {
        for url in ["file:///etc/jwks.json", "not a url", ""] {
            assert!(
                matches!(
                    JwksSource::spawn(JwksConfig::new(url)),
                    Err(KeyError::JwksUrl { .. })
                ),
                "{url}"
            );
        }
    }
}
