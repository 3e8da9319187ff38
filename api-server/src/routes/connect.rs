//! Placement: `/v1/connect` and `/v1/servers`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::Json;
use chat_auth::ticket::{mint, Ticket};
use chat_protocol::ids::new_id;
use chat_protocol::rest::{ConnectResponse, ErrorBody, ServerInfo, ServerList};
use chat_protocol::{now_ms, ErrorCode};

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::placement::{rooms_within, ROOMS_READ, ROOMS_READ_TIMEOUT};
use crate::AppState;

#[utoipa::path(post, path = "/v1/connect",
    responses((status = 200, body = ConnectResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn connect(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<ConnectResponse>> {
    if caller.is_service {
        return Err(ApiError::forbidden(
            "service tokens cannot open WebSocket sessions",
        ));
    }
    let caller = caller.id;
    // Where the caller's rooms have online members, read before the lock.
    // A failed or slow read (a master failing over) places by load alone:
    // the rooms only refine the choice, and must not hold up a reconnect.
    let rooms = if state.placement.uses_rooms() {
        let read = state.store.room_servers_of_user(&caller, ROOMS_READ);
        rooms_within(read, ROOMS_READ_TIMEOUT).await
    } else {
        Vec::new()
    };
    let now = now_ms();
    // Choosing and counting the ticket happen under one lock so concurrent
    // connects on this replica see each other's tickets and rooms.
    let chosen = {
        let mut recent = state
            .placement_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        recent.expire(at);
        let servers = state.registry.live_with_local_pending();
        let rooms_on = |server: &str| {
            rooms
                .iter()
                .filter(|r| r.servers.iter().any(|s| s == server) || recent.placed(&r.room, server))
                .count()
        };
        let chosen = state
            .placement
            .choose_beside_rooms(&servers, rooms_on)
            .cloned();
        if let Some(s) = &chosen {
            state.registry.note_ticket_issued(&s.health.id, now);
            if rooms_on(&s.health.id) > 0 {
                state.metrics.connects_beside_rooms.inc();
            }
            recent.note(
                at,
                &s.health.id,
                rooms.into_iter().map(|r| r.room).collect(),
            );
        }
        chosen
    };
    let Some(server) = chosen else {
        state.metrics.connect_no_server.inc();
        return Err(ApiError::new(
            ErrorCode::NoChatServer,
            "no healthy chat server is available",
        ));
    };
    let ttl = state.config.ticket_ttl_ms;
    // A server that tracks used tickets itself needs no pending entry (two
    // store round trips per connect fewer); one from before takes its
    // tickets from the store.
    let tracked = server.health.tracks_used_tickets;
    let ticket = Ticket {
        id: new_id("t_"),
        user: caller,
        server_id: server.health.id.clone(),
        expires_at_ms: now + ttl,
        issued_at_ms: tracked.then_some(now),
    };
    if !tracked {
        state
            .store
            .add_pending_ticket(&server.health, &ticket.id, ticket.expires_at_ms)
            .await?;
    }
    state.metrics.connects.inc();
    Ok(Json(ConnectResponse {
        url: server.health.url,
        ticket: mint(state.config.ticket_secret.as_bytes(), &ticket),
        server_id: ticket.server_id,
        expires_in_ms: ttl,
    }))
}

#[utoipa::path(get, path = "/v1/servers",
    responses((status = 200, body = ServerList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_servers(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> ApiResult<Json<ServerList>> {
    Ok(Json(ServerList {
        servers: state
            .registry
            .live()
            .iter()
            .map(|s| ServerInfo {
                id: s.health.id.clone(),
                url: s.health.url.clone(),
                state: s.health.state,
                connections: s.health.connections,
                last_seen_ms: s.health.last_seen_ms,
                load: s.health.load,
            })
            .collect(),
    }))
}
