//! Posting and reading messages.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chat_protocol::ids::new_id;
use chat_protocol::now_ms;
use chat_protocol::rest::{ErrorBody, Message, MessageList, PostMessageRequest};
use chat_store::{NewMessage, StoreError};

use super::room_for_member;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, JsonBody};
use crate::AppState;

#[utoipa::path(post, path = "/v1/rooms/{room}/messages", params(("room" = String, Path)),
    request_body = PostMessageRequest,
    responses((status = 201, body = Message), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
    JsonBody(req): JsonBody<PostMessageRequest>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    // A user publishes as themself; a service as itself or as a member.
    let from = caller.acting_as(req.from.as_deref(), "from")?;
    let from_member = !(caller.is_service && req.from.is_none());
    // The append script checks that the room exists and the caller is a
    // member (404 / 403) atomically with the write, so the success path
    // needs no separate reads. Only a bad body looks at the room first, so
    // that non-members still learn nothing but 403/404.
    if let Err(message) = state
        .limits
        .check_message(&req.body, req.client_msg_id.as_deref())
    {
        room_for_member(&state, &room, &caller).await?;
        return Err(ApiError::invalid(message));
    }
    if !chat_protocol::ids::is_plausible_room_id(&room) {
        return Err(ApiError::not_found("no such room"));
    }
    let appended = state
        .store
        .append(NewMessage {
            room,
            id: new_id("m_"),
            from,
            body: req.body,
            ts: now_ms(),
            client_msg_id: req.client_msg_id,
            from_member,
        })
        .await
        .inspect_err(|e| {
            if matches!(e, StoreError::Unavailable(_)) {
                state.metrics.sends_unavailable.inc();
            }
        })?;
    if !appended.duplicate {
        state.metrics.messages_posted.inc();
    }
    // A duplicate is routed again: the first append may have been stored
    // after its request failed, and never routed. Sessions drop known seqs.
    state
        .router
        .route_message(&appended.message, &appended.online)
        .await;
    Ok((StatusCode::CREATED, Json(appended.message)))
}

/// `after` and `before` select the page; neither means the latest messages.
#[derive(Debug, PartialEq)]
pub(crate) struct HistoryQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: u32,
}

pub(crate) fn parse_history_query(
    raw: Option<&str>,
    default_limit: u32,
    max_limit: u32,
) -> Result<HistoryQuery, String> {
    let mut q = HistoryQuery {
        after: None,
        before: None,
        limit: default_limit,
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Bounded to int64, as the OpenAPI schema says: clients in most
        // languages cannot send more anyway.
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| format!("{key} must be an integer in 0..={}", i64::MAX))
        };
        match key {
            "after" => q.after = Some(number()?),
            "before" => q.before = Some(number()?),
            "limit" => {
                let n = number()?;
                if n == 0 || n > max_limit as u64 {
                    return Err(format!("limit must be 1..{max_limit}"));
                }
                q.limit = n as u32;
            }
            _ => {}
        }
    }
    Ok(q)
}

#[utoipa::path(get, path = "/v1/rooms/{room}/messages",
    params(("room" = String, Path), ("after" = Option<u64>, Query, minimum = 0), ("before" = Option<u64>, Query, minimum = 0), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, body = MessageList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_messages(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(room): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<MessageList>> {
    let q = parse_history_query(
        raw.as_deref(),
        state.limits.default_history_limit,
        state.limits.max_history_limit,
    )
    .map_err(ApiError::invalid)?;
    room_for_member(&state, &room, &caller).await?;
    let messages = match (q.after, q.before) {
        // Both: the messages strictly between them, from `after` upwards.
        (Some(after), Some(before)) => {
            let mut page = state.store.messages_after(&room, after, q.limit).await?;
            page.retain(|m| m.seq < before);
            page
        }
        (Some(after), None) => state.store.messages_after(&room, after, q.limit).await?,
        (None, Some(before)) => state.store.messages_before(&room, before, q.limit).await?,
        (None, None) => {
            state
                .store
                .messages_before(&room, u64::MAX, q.limit)
                .await?
        }
    };
    Ok(Json(MessageList { messages }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<HistoryQuery, String> {
        parse_history_query(Some(raw), 50, 200)
    }

    #[test]
    fn history_queries_parse_with_defaults() {
        assert_eq!(
            parse("").unwrap(),
            HistoryQuery {
                after: None,
                before: None,
                limit: 50
            }
        );
        assert_eq!(
            parse("after=5&limit=200").unwrap(),
            HistoryQuery {
                after: Some(5),
                before: None,
                limit: 200
            }
        );
        assert_eq!(parse("before=9&x=y").unwrap().before, Some(9));
        assert_eq!(
            parse("after=1&before=3").unwrap(),
            HistoryQuery {
                after: Some(1),
                before: Some(3),
                limit: 50
            }
        );
    }

    #[test]
    fn bad_history_queries_are_refused() {
        for raw in [
            "limit=0",
            "limit=201",
            "limit=-1",
            "after=x",
            "after=",
            "before=1.5",
            "before=9223372036854775808",
            "limit",
        ] {
            assert!(parse(raw).is_err(), "{raw}");
        }
    }
}
