//! Rooms and membership.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chat_protocol::ids::{is_valid_user_id, new_id};
use chat_protocol::now_ms;
use chat_protocol::rest::{CreateRoomRequest, ErrorBody, Member, MemberList, Room, RoomList};
use chat_store::NewRoom;

use super::room_for_member;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody};
use crate::AppState;

#[utoipa::path(post, path = "/v1/rooms", request_body = CreateRoomRequest,
    responses((status = 201, body = Room), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
/// A user's room has the user as creator and member. A service's has the
/// user named by `created_by` as creator and member, or else the service
/// as creator and only the listed members.
pub async fn create_room(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateRoomRequest>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    state
        .limits
        .check_room_name(&req.name)
        .map_err(ApiError::invalid)?;
    let requested = req.members.unwrap_or_default();
    if requested.len() > state.limits.max_initial_members {
        return Err(ApiError::invalid(format!(
            "at most {} initial members",
            state.limits.max_initial_members
        )));
    }
    if let Some(bad) = requested.iter().find(|u| !is_valid_user_id(u)) {
        return Err(ApiError::invalid(format!(
            "invalid member id {:?}",
            bad.chars().take(70).collect::<String>()
        )));
    }
    let creator = caller.acting_as(req.created_by.as_deref(), "created_by")?;
    let mut members = Vec::with_capacity(requested.len() + 1);
    if !(caller.is_service && req.created_by.is_none()) {
        members.push(creator.clone());
    }
    for m in requested {
        if !members.contains(&m) {
            members.push(m);
        }
    }
    let room = state
        .store
        .create_room(NewRoom {
            id: new_id("r_"),
            name: req.name,
            created_by: creator,
            created_at: now_ms(),
            members,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(room)))
}

#[utoipa::path(get, path = "/v1/rooms",
    responses((status = 200, body = RoomList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_rooms(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<RoomList>> {
    Ok(Json(RoomList {
        rooms: state.store.rooms_of_user(&caller.id).await?,
    }))
}

#[utoipa::path(get, path = "/v1/users/{user}/rooms",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 200, body = RoomList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
/// Services only: a user's rooms with that user's read state.
pub async fn list_user_rooms(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<RoomList>> {
    caller.require_service()?;
    check_user_param(&user)?;
    Ok(Json(RoomList {
        rooms: state.store.rooms_of_user(&user).await?,
    }))
}

#[utoipa::path(get, path = "/v1/rooms/{room}", params(("room" = String, Path)),
    responses((status = 200, body = Room), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_room(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
) -> ApiResult<Json<Room>> {
    Ok(Json(room_for_member(&state, &room, &caller).await?))
}

#[utoipa::path(get, path = "/v1/rooms/{room}/members", params(("room" = String, Path)),
    responses((status = 200, body = MemberList), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
) -> ApiResult<Json<MemberList>> {
    room_for_member(&state, &room, &caller).await?;
    let users = state.store.members(&room).await?;
    let online = state.router.online(&users).await?;
    Ok(Json(MemberList {
        members: users
            .into_iter()
            .map(|user| Member {
                online: online.contains(&user),
                user,
            })
            .collect(),
    }))
}

#[utoipa::path(put, path = "/v1/rooms/{room}/members/{user}",
    params(("room" = String, Path), ("user" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((room, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_user_param(&user)?;
    room_for_member(&state, &room, &caller).await?;
    state.store.add_member(&room, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/rooms/{room}/members/{user}",
    params(("room" = String, Path), ("user" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((room, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_user_param(&user)?;
    let found = room_for_member(&state, &room, &caller).await?;
    if !caller.is_service && caller.id != user && caller.id != found.created_by {
        return Err(ApiError::forbidden(
            "only the room's creator may remove other members",
        ));
    }
    state.store.remove_member(&room, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `{user}` path parameter: a valid user id, or 400.
pub(crate) fn check_user_param(user: &str) -> ApiResult<()> {
    if is_valid_user_id(user) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "user must be 1-64 characters of [A-Za-z0-9_.-]",
        ))
    }
}
