//! The stateless REST API of the chat service.
//!
//! Every replica is interchangeable: all state is in the [`Store`]. The
//! router is built by [`app`] so tests and the local mode can serve it
//! in-process; [`main.rs`] only parses flags and wires the store.

pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod placement;
pub mod routes;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chat_ops::{Counter, Metrics, ReadinessCheck};
use chat_protocol::Limits;
use chat_routing::{LinkConfig, LinkPool, MessageRouter, RegistryConfig, ServerRegistry};
use chat_store::Store;

pub use config::{ApiConfig, ConfigError};
use error::ApiError;
use placement::{PlacementPolicy, RecentPlacements};

pub struct ApiMetrics {
    pub http_requests: Arc<Counter>,
    pub http_errors: Arc<Counter>,
    pub messages_posted: Arc<Counter>,
    pub connects: Arc<Counter>,
    pub connect_no_server: Arc<Counter>,
    pub connects_beside_rooms: Arc<Counter>,
    pub sends_unavailable: Arc<Counter>,
}

impl ApiMetrics {
    fn new(m: &Metrics) -> Self {
        ApiMetrics {
            http_requests: m.counter("api_http_requests_total", "REST requests served."),
            http_errors: m.counter(
                "api_http_errors_total",
                "REST requests answered with an error status.",
            ),
            messages_posted: m
                .counter("api_messages_posted_total", "Messages stored through REST."),
            connects: m.counter(
                "api_connect_tickets_total",
                "Tickets handed out by /v1/connect.",
            ),
            connect_no_server: m.counter(
                "api_connect_no_server_total",
                "/v1/connect calls refused because no chat server was available.",
            ),
            connects_beside_rooms: m.counter(
                "api_connect_beside_rooms_total",
                "Tickets for a chat server where some of the client's rooms already had online members.",
            ),
            sends_unavailable: m.counter(
                "api_sends_unavailable_total",
                "REST sends refused as unavailable (not confirmed as stored; the client retries).",
            ),
        }
    }
}

pub struct AppState {
    pub config: ApiConfig,
    /// Checks user tokens (`Caller`).
    pub tokens: chat_auth::TokenVerifier,
    pub allowed_origins: chat_auth::AllowedOrigins,
    pub limits: Limits,
    pub store: Arc<dyn Store>,
    pub registry: Arc<ServerRegistry>,
    pub router: Arc<MessageRouter>,
    pub placement: PlacementPolicy,
    /// Held while a connect chooses its server: the recent placements'
    /// rooms, and the pending tickets counted in the registry.
    pub placement_lock: Mutex<RecentPlacements>,
    pub metrics: ApiMetrics,
    pub metrics_registry: Arc<Metrics>,
}

impl AppState {
    /// Wires the state and starts the registry refresh (and the JWKS
    /// fetches, when configured). `Err` for unusable token keys.
    pub fn new(config: ApiConfig, store: Arc<dyn Store>) -> Result<Arc<Self>, ConfigError> {
        let tokens = config.token_verifier()?;
        let metrics_registry = Metrics::new();
        let group_commit = store.clone();
        metrics_registry.counters_fn(
            "api",
            move || group_commit.group_commit_stats().unwrap_or_default(),
            &chat_store::GROUP_COMMIT_COUNTERS,
        );
        let presence_index = store.clone();
        metrics_registry.counters_fn(
            "api",
            move || presence_index.presence_index_stats().unwrap_or_default(),
            &chat_store::PRESENCE_INDEX_COUNTERS,
        );
        let registry = ServerRegistry::new(
            store.clone(),
            RegistryConfig {
                refresh_interval_ms: config.registry_refresh_ms,
                dead_after_ms: config.dead_after_ms,
                require_registration: config.require_registration,
            },
        );
        registry.spawn_refresh();
        let links = LinkPool::new(LinkConfig {
            internal_secret: config.internal_secret.clone(),
            ..LinkConfig::default()
        });
        let router = Arc::new(
            MessageRouter::new(store.clone(), registry.clone(), links, None)
                .with_fanout_limits(config.fanout),
        );
        chat_routing::spawn_presence_reaper(
            router.clone(),
            store.clone(),
            chat_routing::presence_reap_interval(std::time::Duration::from_millis(
                config.dead_after_ms,
            )),
        );
        let placement = config.placement_policy();
        Ok(Arc::new(AppState {
            tokens,
            allowed_origins: chat_auth::AllowedOrigins::new(&config.cors_origins),
            limits: config.limits(),
            config,
            store,
            registry,
            router,
            placement,
            placement_lock: Mutex::new(RecentPlacements::default()),
            metrics: ApiMetrics::new(&metrics_registry),
            metrics_registry,
        }))
    }
}

/// Ready when user tokens can be checked (a configured JWKS has been
/// loaded once) and the store answers.
struct ApiReadiness(Arc<AppState>);

#[async_trait]
impl ReadinessCheck for ApiReadiness {
    async fn ready(&self) -> Result<(), String> {
        self.0.tokens.ready()?;
        self.0.store.ping().await.map_err(|e| e.to_string())
    }
}

/// The whole HTTP surface: REST, operational endpoints, OpenAPI.
pub fn app(state: Arc<AppState>) -> Router {
    use routes::{auth, connect, messages, reads, rooms};
    let api = Router::new()
        .route("/v1/auth/token", post(auth::issue_token))
        .route("/v1/rooms", post(rooms::create_room).get(rooms::list_rooms))
        .route("/v1/rooms/{room}", get(rooms::get_room))
        .route("/v1/rooms/{room}/members", get(rooms::list_members))
        .route("/v1/rooms/{room}/read", put(reads::mark_read))
        .route("/v1/rooms/{room}/reads", get(reads::list_reads))
        .route("/v1/users/{user}/rooms", get(rooms::list_user_rooms))
        .route(
            "/v1/rooms/{room}/members/{user}",
            put(rooms::add_member).delete(rooms::remove_member),
        )
        .route(
            "/v1/rooms/{room}/messages",
            post(messages::post_message).get(messages::list_messages),
        )
        .route("/v1/connect", post(connect::connect))
        .route("/v1/servers", get(connect::list_servers))
        .route("/openapi.json", get(|| async { Json(openapi::spec()) }));
    let api = if state.config.console {
        api.route("/", get(console::index))
            .route("/assets/{*path}", get(console::asset))
    } else {
        api
    };
    let api = api
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: Some(axum::http::StatusCode::METHOD_NOT_ALLOWED),
                ..ApiError::invalid("method not allowed on this endpoint")
            }
        })
        .layer(DefaultBodyLimit::max(state.limits.max_request_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state.clone());
    api.merge(ops(&state))
}

/// `/healthz`, `/readyz`, `/metrics`.
fn ops(state: &Arc<AppState>) -> Router {
    chat_ops::ops_router(
        state.metrics_registry.clone(),
        Arc::new(ApiReadiness(state.clone())),
    )
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    state.metrics.http_requests.inc();
    let response = next.run(req).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        state.metrics.http_errors.inc();
    }
    response
}

/// Bounds every request: a store that hangs yields `unavailable`, not a
/// client waiting forever.
async fn time_limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = std::time::Duration::from_millis(state.config.request_timeout_ms.max(1));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            chat_protocol::ErrorCode::Unavailable,
            "the request timed out; retry later",
        )),
    }
}

/// CORS for browser clients, from `--cors-origins`. Preflights are answered
/// here; other responses get the allow headers when the origin is allowed.
async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue, Method, StatusCode};
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_deref()
        .filter(|o| state.allowed_origins.allows(o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight && allowed.is_some() {
        let mut r = axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    if let Some(origin) = allowed {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// Serves until `shutdown` resolves, then finishes in-flight requests;
/// slow, idle and surplus connections are dealt with by
/// [`chat_ops::serve`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.connections.limits();
    chat_ops::serve::serve(listener, app(state.clone()), ops(&state), limits, shutdown).await
}
