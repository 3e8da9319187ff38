//! Extractors that turn bad input into the contract's errors instead of
//! axum's plain-text rejections.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use chat_protocol::{now_ms, ErrorCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated caller, from `Authorization: Bearer <jwt>`: a user, or
/// an application backend with a service token (contract v1.1).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's `sub`: the user id, or the service's name.
    pub id: String,
    pub is_service: bool,
}

impl Caller {
    /// The user a request acts as when it may name one (`from`,
    /// `created_by`): a service may name any valid user (itself when it
    /// names none); a user only themself.
    pub fn acting_as(&self, named: Option<&str>, field: &str) -> Result<String, ApiError> {
        match named {
            None => Ok(self.id.clone()),
            Some(user) if !chat_protocol::ids::is_valid_user_id(user) => Err(ApiError::invalid(
                format!("{field} must be a user id: 1-64 characters of [A-Za-z0-9_.-]"),
            )),
            Some(user) if self.is_service || user == self.id => Ok(user.to_owned()),
            Some(_) => Err(ApiError::invalid(format!(
                "{field} may name only the caller; naming other users needs a service token"
            ))),
        }
    }

    /// Services only: 403 for a user token.
    pub fn require_service(&self) -> Result<(), ApiError> {
        if self.is_service {
            Ok(())
        } else {
            Err(ApiError::forbidden("this call needs a service token"))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be a Bearer token"))?;
        let claims = state
            .tokens
            .verify(token.trim(), now_ms() / 1000)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        Ok(Caller {
            is_service: claims.is_service(),
            id: claims.sub,
        })
    }
}

/// A JSON body: size-limited (413 `payload_too_large`) and parsed with
/// serde (400 `invalid_request` naming the problem).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            } else {
                ApiError::invalid(format!("unreadable request body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}
