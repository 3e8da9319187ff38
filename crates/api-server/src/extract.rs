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

/// The authenticated caller, from `Authorization: Bearer <jwt>`.
pub struct AuthUser(pub String);

impl FromRequestParts<Arc<AppState>> for AuthUser {
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
        let claims = chat_auth::jwt::verify_token(
            state.config.jwt_secret.as_bytes(),
            token.trim(),
            now_ms() / 1000,
            state.config.jwt_leeway_s,
        )
        .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        Ok(AuthUser(claims.sub))
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
