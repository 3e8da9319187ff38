//! The receiving end of internal links: batches of deliveries from API
//! servers and other chat servers, authenticated by the shared secret.

use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_protocol::ErrorCode;
use chat_routing::delivery::decode_batch;
use chat_routing::{secret_matches, LocalDelivery, INTERNAL_SECRET_HEADER};

use crate::{refuse, ChatServer};

/// Internal endpoints need the shared secret, compared in constant time.
fn authorize(server: &ChatServer, headers: &HeaderMap) -> Result<(), Response> {
    let presented = headers
        .get(INTERNAL_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if secret_matches(presented, &server.config.internal_secret) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "bad internal secret",
        ))
    }
}

/// `POST /internal/drain`: the operator asks this server to drain before
/// it is removed. 202 once the drain has started (or already had).
pub(crate) async fn drain(State(server): State<Arc<ChatServer>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&server, &headers) {
        return refused;
    }
    let started = server.start_drain();
    tracing::info!(started, "drain requested over the internal API");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"draining": true, "connections": server.hub.connections()})),
    )
        .into_response()
}

pub(crate) async fn upgrade(
    State(server): State<Arc<ChatServer>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = authorize(&server, &headers) {
        return refused;
    }
    upgrade
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| receive(server, socket))
        .into_response()
}

async fn receive(server: Arc<ChatServer>, mut socket: WebSocket) {
    while let Some(Ok(frame)) = socket.recv().await {
        let WsMessage::Text(text) = frame else {
            continue;
        };
        server.metrics.link_batches.inc();
        match decode_batch(text.as_str()) {
            Ok(deliveries) => {
                for d in deliveries {
                    server.hub.deliver(Arc::new(d));
                }
            }
            Err(e) => tracing::warn!(error = %e, "dropping malformed link batch"),
        }
    }
}
