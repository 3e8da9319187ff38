//! API server configuration: flags and `CHAT_*` environment variables.

use std::net::SocketAddr;

use chat_protocol::Limits;
use chat_store::StoreArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// Address the REST API listens on.
    #[arg(
        long = "listen",
        env = "CHAT_API_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// HS256 secret that signs user tokens (the application backend's).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
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
    /// Accepted clock skew on token expiry.
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
    /// Most members a room may be created with.
    #[arg(long, env = "CHAT_MAX_INITIAL_MEMBERS", default_value_t = 1000)]
    pub max_initial_members: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub fanout: chat_routing::FanoutLimits,
}

impl ApiConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_request_bytes: self.max_request_bytes,
            max_initial_members: self.max_initial_members,
            ..Limits::default()
        }
    }
}
