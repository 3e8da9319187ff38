//! API server configuration: flags and `CHAT_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use chat_auth::{ClaimChecks, JwksConfig, JwksSource, KeyError, TokenVerifier, VerifyingKey};
use chat_protocol::Limits;
use chat_store::StoreArgs;

use crate::placement::PlacementPolicy;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// Address the REST API listens on.
    #[arg(
        long = "listen",
        env = "CHAT_API_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// HS256 secret that signs user tokens (the application backend's) and
    /// development tokens. Optional when public keys are configured.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public keys of RS256/ES256 user tokens, comma-separated or
    /// repeated: RSA (2048 bits or more) or EC P-256, one key per file; the
    /// algorithm is the key type's.
    #[arg(
        long = "jwt-public-key-file",
        env = "CHAT_JWT_PUBLIC_KEY_FILE",
        value_delimiter = ','
    )]
    pub jwt_public_key_files: Vec<PathBuf>,
    /// JWKS URL of an identity provider: its RS256/ES256 keys, chosen by the
    /// token's `kid`, fetched in the background.
    #[arg(long, env = "CHAT_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[arg(long, env = "CHAT_JWT_JWKS_REFRESH_S", default_value_t = JwksConfig::DEFAULT_REFRESH_S)]
    pub jwt_jwks_refresh_s: u64,
    /// Shortest time between two JWKS fetches: a token with an unknown `kid`
    /// fetches the set again, but no sooner than this after the last fetch.
    #[arg(long, env = "CHAT_JWT_JWKS_MIN_REFRESH_S", default_value_t = JwksConfig::DEFAULT_MIN_REFRESH_S)]
    pub jwt_jwks_min_refresh_s: u64,
    /// Accepted `iss` values of user tokens, comma-separated; when set, a
    /// token without one of them is refused.
    #[arg(long, env = "CHAT_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
    /// Accepted `aud` values of user tokens, comma-separated; when set, a
    /// token whose `aud` names none of them is refused.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Secret shared with the chat servers that signs WebSocket tickets.
    #[arg(long, env = "CHAT_TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: String,
    /// Secret that authenticates internal links to the chat servers.
    #[arg(long, env = "CHAT_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: String,
    /// Serve POST /v1/auth/token (development only: anyone gets any user).
    #[arg(long, env = "CHAT_DEV_TOKENS", default_value_t = false)]
    pub dev_tokens: bool,
    /// Lifetime of development tokens.
    #[arg(long, env = "CHAT_DEV_TOKEN_TTL_S", default_value_t = 86_400)]
    pub dev_token_ttl_s: u64,
    /// Accepted clock skew on token expiry (`exp`, and `nbf` when present).
    #[arg(long, env = "CHAT_JWT_LEEWAY_S", default_value_t = 30)]
    pub jwt_leeway_s: u64,
    /// Lifetime of a WebSocket ticket from /v1/connect.
    #[arg(long, env = "CHAT_TICKET_TTL_MS", default_value_t = 30_000)]
    pub ticket_ttl_ms: u64,
    /// A chat server silent for longer than this is dead.
    #[arg(long, env = "CHAT_DEAD_AFTER_MS", default_value_t = 3_000)]
    pub dead_after_ms: u64,
    /// How often the live-server view is re-read from the store.
    #[arg(long, env = "CHAT_REGISTRY_REFRESH_MS", default_value_t = 250)]
    pub registry_refresh_ms: u64,
    /// Placement keeps a room's members together: a client goes to the
    /// chat server where most of its rooms already have online members if
    /// that server has at most this many more connections (plus pending
    /// tickets) than the least busy one, or the fraction below of the
    /// least busy one's, whichever is more. 0 and 0: load alone, and no
    /// read of the client's rooms on connect.
    #[arg(long, env = "CHAT_PLACEMENT_ROOM_AFFINITY_CONNECTIONS", default_value_t = PlacementPolicy::default().room_affinity_connections)]
    pub placement_room_affinity_connections: u64,
    /// See `--placement-room-affinity-connections`.
    #[arg(long, env = "CHAT_PLACEMENT_ROOM_AFFINITY_SLACK", default_value_t = PlacementPolicy::default().room_affinity_slack)]
    pub placement_room_affinity_slack: f64,
    /// Kubernetes mode: place clients only on chat servers the operator
    /// registered for a ChatCluster.
    #[arg(long, env = "CHAT_REQUIRE_REGISTRATION", default_value_t = false)]
    pub require_registration: bool,
    /// Browser origins allowed to call the REST API (CORS), comma-separated:
    /// exact origins, `*` for any, or `http://host:*` for any port. Empty
    /// (the default): no CORS headers. Chat servers take the same list for
    /// the WebSocket handshake.
    #[arg(long, env = "CHAT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Serve the web console at `/` (`--console false` turns it off).
    #[arg(long, env = "CHAT_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,
    /// Longest time a REST request may take before it is answered with 503.
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Largest message body in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = 4096)]
    pub max_body_bytes: usize,
    /// Largest REST request body in bytes.
    #[arg(long, env = "CHAT_MAX_REQUEST_BYTES", default_value_t = 65_536)]
    pub max_request_bytes: usize,
    #[command(flatten)]
    pub connections: chat_ops::serve::ConnectionArgs,
    /// Most members a room may be created with.
    #[arg(long, env = "CHAT_MAX_INITIAL_MEMBERS", default_value_t = 1000)]
    pub max_initial_members: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub fanout: chat_routing::FanoutLimits,
}

/// A configuration the API server cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("user tokens: {0}")]
    Tokens(#[from] KeyError),
    #[error("--dev-tokens needs --jwt-secret: development tokens are HS256")]
    DevTokensWithoutSecret,
}

impl ApiConfig {
    /// The verifier of user tokens: the HS256 secret, the public key files
    /// and the JWKS URL, whichever are set. Starts the JWKS fetches, so it
    /// needs a tokio runtime.
    pub fn token_verifier(&self) -> Result<TokenVerifier, ConfigError> {
        if self.dev_tokens && self.jwt_secret.is_none() {
            return Err(ConfigError::DevTokensWithoutSecret);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &self.jwt_secret {
            keys.push(VerifyingKey::hs256(secret.as_bytes())?);
        }
        for path in &self.jwt_public_key_files {
            keys.push(VerifyingKey::from_pem_file(path)?);
        }
        let jwks = match &self.jwt_jwks_url {
            Some(url) => Some(JwksSource::spawn(JwksConfig {
                refresh_s: self.jwt_jwks_refresh_s,
                min_refresh_s: self.jwt_jwks_min_refresh_s,
                ..JwksConfig::new(url)
            })?),
            None => None,
        };
        let public_keys = !self.jwt_public_key_files.is_empty() || jwks.is_some();
        tracing::info!(
            hs256_secret = self.jwt_secret.is_some(),
            public_key_files = self.jwt_public_key_files.len(),
            jwks_url = self.jwt_jwks_url.as_deref().unwrap_or("none"),
            issuers = ?self.jwt_issuer,
            audiences = ?self.jwt_audience,
            "user token keys"
        );
        if public_keys && self.jwt_audience.is_empty() {
            tracing::warn!(
                "public token keys without --jwt-audience: a token the same identity \
                 provider issued for another service is accepted too"
            );
        }
        Ok(TokenVerifier::new(
            keys,
            jwks,
            ClaimChecks {
                issuers: self.jwt_issuer.clone(),
                audiences: self.jwt_audience.clone(),
                leeway_s: self.jwt_leeway_s,
            },
        )?)
    }

    pub fn placement_policy(&self) -> PlacementPolicy {
        PlacementPolicy {
            room_affinity_connections: self.placement_room_affinity_connections,
            room_affinity_slack: self.placement_room_affinity_slack,
            ..PlacementPolicy::default()
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_request_bytes: self.max_request_bytes,
            max_initial_members: self.max_initial_members,
            ..Limits::default()
        }
    }
}
