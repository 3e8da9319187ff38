use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chat_auth::jwt::{mint, Claims, SERVICE_SCOPE};
use chat_protocol::ids::is_valid_user_id;
use chat_protocol::now_ms;
use chat_protocol::rest::{TokenRequest, TokenResponse, TokenScope};

use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::AppState;

/// Development tokens: any caller gets a token for any user. Only served
/// when enabled (the local mode); production tokens come from the
/// application's backend, signed with the same secret.
#[utoipa::path(post, path = "/v1/auth/token", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = chat_protocol::rest::ErrorBody),
              (status = 404, description = "development tokens are disabled", body = chat_protocol::rest::ErrorBody)))]
pub async fn issue_token(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let secret = match &state.config.jwt_secret {
        Some(secret) if state.config.dev_tokens => secret,
        // (`--dev-tokens` without a secret is refused at startup.)
        _ => return Err(ApiError::not_found("development tokens are disabled")),
    };
    if !is_valid_user_id(&req.user) {
        return Err(ApiError::invalid(
            "user must be 1-64 characters of [A-Za-z0-9_.-]",
        ));
    }
    let scope = req.scope.unwrap_or_default();
    let now_s = now_ms() / 1000;
    let exp = now_s + state.config.dev_token_ttl_s;
    let token = mint(
        secret.as_bytes(),
        &Claims {
            sub: req.user.clone(),
            exp,
            iat: Some(now_s),
            scope: (scope == TokenScope::Service).then(|| SERVICE_SCOPE.to_owned()),
        },
    );
    Ok(Json(TokenResponse {
        token,
        user: req.user,
        expires_at: exp * 1000,
        scope,
    }))
}
