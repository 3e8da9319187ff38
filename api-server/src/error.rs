//! [`ApiError`]: the one place where failures become the contract's error
//! body `{"error": {"code", "message"}}` and status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_protocol::rest::ErrorBody;
use chat_protocol::ErrorCode;
use chat_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Overrides the code's status (405 for a wrong method).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            status: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoRoom(_) => ApiError::not_found("no such room"),
            StoreError::NotMember { .. } => ApiError::forbidden("not a member of this room"),
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "storage is unavailable; retry later",
                )
            }
            StoreError::Corrupt(reason) => {
                tracing::error!(%reason, "corrupt store record");
                ApiError::new(ErrorCode::Unavailable, "storage returned a bad record")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
