//! CORS and request limits, through the real router in-process (the
//! in-memory store; no network mocks: requests go through axum's service).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use clap::Parser;
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    api: api_server::ApiConfig,
}

fn app(extra: &[&str]) -> axum::Router {
    let mut argv = vec![
        "api-server",
        "--jwt-secret=j",
        "--ticket-secret=t",
        "--internal-secret=i",
        "--dev-tokens",
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).unwrap();
    let store = Arc::new(chat_store::MemoryStore::default());
    api_server::app(api_server::AppState::new(args.api, store).unwrap())
}

#[tokio::test]
async fn cors_answers_preflights_for_allowed_origins_only() {
    let app = app(&["--cors-origins=https://chat.example.com"]);
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/rooms")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    let ok = app
        .clone()
        .oneshot(preflight("https://chat.example.com"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://chat.example.com"
    );
    assert!(ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let other = app
        .clone()
        .oneshot(preflight("https://evil.example"))
        .await
        .unwrap();
    assert!(other
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    let get = Request::builder()
        .uri("/healthz")
        .header(header::ORIGIN, "https://chat.example.com")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_cors_origins_no_cors_headers_are_sent() {
    let app = app(&[]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/token")
        .header(header::ORIGIN, "https://chat.example.com")
        .body(Body::from(r#"{"user":"alice"}"#))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn oversize_bodies_get_payload_too_large() {
    let app = app(&["--max-request-bytes=1024"]);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/token")
        .body(Body::from(format!(r#"{{"user":"{}"}}"#, "a".repeat(2000))))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = axum::body::to_bytes(response.into_body(), 10_000)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn the_console_is_served_at_the_root_unless_turned_off() {
    let get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
    let page = app(&[]).oneshot(get("/")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let missing = app(&[]).oneshot(get("/assets/nope.js")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let off = app(&["--console=false"]).oneshot(get("/")).await.unwrap();
    assert_eq!(
        off.status(),
        StatusCode::NOT_FOUND,
        "--console false serves no page"
    );
}
