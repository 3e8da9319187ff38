//! REST handlers, one file per resource.

pub mod auth;
pub mod connect;
pub mod messages;
pub mod reads;
pub mod rooms;

use chat_protocol::ids::is_plausible_room_id;
use chat_protocol::rest::Room;

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::AppState;

/// The room as `caller` sees it (their read state), if it exists (404)
/// and the caller is a member (403) or a service (which may see any room).
/// One atomic read of the room's slot.
pub(crate) async fn room_for_member(
    state: &AppState,
    room: &str,
    caller: &Caller,
) -> ApiResult<Room> {
    if !is_plausible_room_id(room) {
        return Err(ApiError::not_found("no such room"));
    }
    let viewer = if caller.is_service { "" } else { &caller.id };
    let view = state
        .store
        .room_view(room, viewer)
        .await?
        .ok_or_else(|| ApiError::not_found("no such room"))?;
    if !view.is_member && !caller.is_service {
        return Err(ApiError::forbidden("not a member of this room"));
    }
    Ok(view.room)
}
