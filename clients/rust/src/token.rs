//! Tokens: the application's [`TokenProvider`], and the cache in front of
//! it. A token is asked for again when it is about to expire (the JWT's
//! `exp`, read without verifying: the server verifies) or after the server
//! refused it with 401.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;

use crate::Error;

/// Refresh this long before `exp`.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Where the client gets its bearer token. Called when a token is first
/// needed, shortly before the current one expires, and after a 401.
///
/// Implemented by [`StaticToken`], by [`DevTokens`] (development tokens
/// from `POST /v1/auth/token`), and by any closure returning a future of
/// `Result<String, Error>` (wrap it with [`token_fn`]).
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// A token to use now.
    async fn token(&self) -> Result<String, Error>;
}

/// Always the same token (a token minted elsewhere, e.g. `CHAT_TOKEN`).
/// After a 401 the call fails with [`crate::ErrorKind::Unauthorized`].
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(token.into())
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(..)")
    }
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Result<String, Error> {
        Ok(self.0.clone())
    }
}

/// Development tokens from `POST /v1/auth/token` (only where the API server
/// runs with development tokens on, as in the local mode). A new one is
/// minted whenever the client asks.
#[derive(Debug, Clone)]
pub struct DevTokens {
    api_url: String,
    user: String,
    scope: chat_protocol::rest::TokenScope,
}

impl DevTokens {
    /// User tokens for `user`.
    pub fn user(api_url: impl Into<String>, user: impl Into<String>) -> Self {
        DevTokens {
            api_url: api_url.into(),
            user: user.into(),
            scope: chat_protocol::rest::TokenScope::User,
        }
    }

    /// Service tokens (v1.1) naming the service `name`.
    pub fn service(api_url: impl Into<String>, name: impl Into<String>) -> Self {
        DevTokens {
            api_url: api_url.into(),
            user: name.into(),
            scope: chat_protocol::rest::TokenScope::Service,
        }
    }
}

#[async_trait]
impl TokenProvider for DevTokens {
    async fn token(&self) -> Result<String, Error> {
        let r = crate::rest::dev_token(&self.api_url, &self.user, self.scope).await?;
        Ok(r.token)
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// A [`TokenProvider`] from a closure.
///
/// ```
/// use chat_client::{token_fn, Error};
/// let provider = token_fn(|| async { Ok::<_, Error>("a token from my backend".to_string()) });
/// # let _ = provider;
/// ```
pub fn token_fn<F, Fut>(f: F) -> impl TokenProvider
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Error>> + Send + 'static,
{
    struct FnProvider(Box<dyn Fn() -> TokenFuture + Send + Sync>);
    #[async_trait]
    impl TokenProvider for FnProvider {
        async fn token(&self) -> Result<String, Error> {
            (self.0)().await
        }
    }
    FnProvider(Box::new(move || Box::pin(f())))
}

/// A cached token and its expiry (if the token is a JWT with `exp`).
type Cached = Option<(String, Option<SystemTime>)>;

/// The provider with a cache: the current token and its expiry.
#[derive(Clone)]
pub(crate) struct TokenSource {
    provider: Arc<dyn TokenProvider>,
    cached: Arc<tokio::sync::Mutex<Cached>>,
}

impl TokenSource {
    pub(crate) fn new(provider: Arc<dyn TokenProvider>) -> Self {
        TokenSource {
            provider,
            cached: Arc::default(),
        }
    }

    /// The cached token, or a new one if none is cached or it expires soon.
    /// Concurrent callers share one call of the provider (the lock is held
    /// across it).
    pub(crate) async fn get(&self) -> Result<String, Error> {
        let mut cached = self.cached.lock().await;
        if let Some((token, exp)) = cached.as_ref() {
            let fresh = exp.is_none_or(|exp| SystemTime::now() + EXPIRY_MARGIN < exp);
            if fresh {
                return Ok(token.clone());
            }
        }
        let token = self.provider.token().await?;
        if token.is_empty() {
            return Err(Error::Token(
                "the token provider returned an empty token".into(),
            ));
        }
        *cached = Some((token.clone(), jwt_expiry(&token)));
        Ok(token)
    }

    /// The server refused `token`: the next `get` asks the provider again.
    pub(crate) async fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t == token) {
            *cached = None;
        }
    }
}

/// The claims of a JWT, read without verifying (the server verifies).
fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `exp` claim of a JWT, if it is one we can read.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let exp = jwt_claims(token)?.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// The `sub` claim of a JWT (the user id), if readable.
pub fn jwt_subject(token: &str) -> Option<String> {
    jwt_claims(token)?.get("sub")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn jwt(claims: serde_json::Value) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(br#"{"alg":"HS256"}"#),
            enc.encode(claims.to_string())
        )
    }

    #[test]
    fn claims_are_read_without_verifying() {
        let t = jwt(serde_json::json!({"sub":"alice","exp":2000000000u64}));
        assert_eq!(jwt_subject(&t).as_deref(), Some("alice"));
        assert_eq!(
            jwt_expiry(&t),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("not a jwt"), None);
    }

    #[tokio::test]
    async fn the_provider_is_asked_again_after_invalidate_and_near_expiry() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let source = TokenSource::new(Arc::new(token_fn(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                // The second token expires at once: the third call follows.
                let exp = if n == 1 { 1 } else { 4_000_000_000u64 };
                Ok(jwt(serde_json::json!({"sub":"a","exp":exp,"n":n})))
            }
        })));
        let t1 = source.get().await.unwrap();
        assert_eq!(source.get().await.unwrap(), t1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        source.invalidate(&t1).await;
        let t2 = source.get().await.unwrap();
        assert_ne!(t1, t2);
        let t3 = source.get().await.unwrap();
        assert_ne!(t2, t3, "an expired token is replaced");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
