//! Read state (contract v1.1): moving the caller's read marker, and every
//! member's marker.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use chat_protocol::ids::is_plausible_room_id;
use chat_protocol::rest::{ErrorBody, MemberRead, ReadList, ReadMarker, ReadRequest};

use super::room_for_member;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody};
use crate::AppState;

#[utoipa::path(put, path = "/v1/rooms/{room}/read", params(("room" = String, Path)),
    request_body = ReadRequest,
    responses((status = 200, body = ReadMarker), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// Moves the caller's marker forward (never back; above the latest seq it
/// stops at the latest). When it moved, a `read` frame goes to the
/// caller's sessions and, in small rooms, to the other members'.
pub async fn mark_read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
    JsonBody(req): JsonBody<ReadRequest>,
) -> ApiResult<Json<ReadMarker>> {
    if !is_plausible_room_id(&room) {
        return Err(ApiError::not_found("no such room"));
    }
    if caller.is_service {
        return Err(ApiError::forbidden("a service has no read marker"));
    }
    let marked = state.store.mark_read(&room, &caller.id, req.seq).await?;
    state.router.route_read(&room, &caller.id, &marked).await;
    Ok(Json(ReadMarker {
        room,
        read_seq: marked.read_seq,
    }))
}

#[utoipa::path(get, path = "/v1/rooms/{room}/reads", params(("room" = String, Path)),
    responses((status = 200, body = ReadList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_reads(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
) -> ApiResult<Json<ReadList>> {
    room_for_member(&state, &room, &caller).await?;
    let reads = state.store.reads(&room).await?;
    Ok(Json(ReadList {
        reads: reads
            .into_iter()
            .map(|(user, seq)| MemberRead { user, seq })
            .collect(),
    }))
}
