//! The web console (`console/`), built by Vite into `console/dist` and
//! compiled into this binary: `/` serves its page, `/assets/*` its files.
//! The build is committed and CI checks it matches its sources, so a fresh
//! clone serves the console with no Node installed.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::error::ApiError;

#[derive(RustEmbed)]
#[folder = "../console/dist"]
struct ConsoleAssets;

/// No inline scripts, nothing from elsewhere: what a user types can never
/// run, even if a rendering bug let markup through. WebSockets go to the
/// chat servers, which are other origins (other ports or hosts).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub async fn index() -> Response {
    serve("index.html", "no-cache")
}

pub async fn asset(Path(path): Path<String>) -> Response {
    // Vite names assets by content hash: they never change under a name.
    serve(
        &format!("assets/{path}"),
        "public, max-age=31536000, immutable",
    )
}

fn serve(path: &str, cache_control: &'static str) -> Response {
    let Some(file) = ConsoleAssets::get(path) else {
        return ApiError::not_found("no such console file").into_response();
    };
    let mime = file.metadata.mimetype();
    let mut response = (StatusCode::OK, file.data.into_owned()).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
