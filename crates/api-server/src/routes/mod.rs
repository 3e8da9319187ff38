//! REST handlers, one file per resource.

pub mod auth;
pub mod connect;
pub mod messages;
pub mod rooms;

use chat_protocol::ids::is_plausible_room_id;
use chat_protocol::rest::Room;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The room, if it exists (404) and `user` is a member (403).
pub(crate) async fn room_for_member(state: &AppState, room: &str, user: &str) -> ApiResult<Room> {
    if !is_plausible_room_id(room) {
        return Err(ApiError::not_found("no such room"));
    }
    let found = state
        .store
        .room(room)
        .await?
        .ok_or_else(|| ApiError::not_found("no such room"))?;
    if !state.store.is_member(room, user).await? {
        return Err(ApiError::forbidden("not a member of this room"));
    }
    Ok(found)
}
