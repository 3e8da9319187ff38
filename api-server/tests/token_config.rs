//! Which token configurations the API server starts with, and that tokens
//! signed by a configured public key are taken on REST, in-process (the
//! real router, the in-memory store).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use clap::Parser;
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    api: api_server::ApiConfig,
}

const EC_PUB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/chat-auth/tests/keys/ec-a.pub.pem"
);
const EC_KEY: &[u8] = include_bytes!("../../crates/chat-auth/tests/keys/ec-a.key.pem");
const RSA_KEY: &[u8] = include_bytes!("../../crates/chat-auth/tests/keys/rsa-a.key.pem");

fn state(token_args: &[&str]) -> Result<Arc<api_server::AppState>, api_server::ConfigError> {
    let mut argv = vec!["api-server", "--ticket-secret=t", "--internal-secret=i"];
    argv.extend_from_slice(token_args);
    let args = Args::try_parse_from(argv).unwrap();
    api_server::AppState::new(args.api, Arc::new(chat_store::MemoryStore::default()))
}

fn es256(private_pem: &[u8]) -> String {
    let now_s = chat_protocol::now_ms() / 1000;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({ "sub": "alice", "exp": now_s + 600 }),
        &jsonwebtoken::EncodingKey::from_ec_pem(private_pem).unwrap(),
    )
    .unwrap()
}

async fn list_rooms(app: &axum::Router, token: &str) -> StatusCode {
    let request = Request::get("/v1/rooms")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn the_server_needs_a_usable_token_key() {
    let refusal = |args: &[&str]| state(args).err().map(|e| e.to_string());
    assert!(refusal(&[]).unwrap().contains("no token keys"));
    assert!(refusal(&["--jwt-public-key-file=/nonexistent.pem"])
        .unwrap()
        .contains("/nonexistent.pem"));
    assert!(refusal(&["--jwt-secret="]).unwrap().contains("empty"));
    assert!(refusal(&["--jwt-jwks-url=file:///etc/jwks.json"])
        .unwrap()
        .contains("http"));
    assert!(refusal(&["--jwt-public-key-file", EC_PUB, "--dev-tokens"])
        .unwrap()
        .contains("--dev-tokens needs --jwt-secret"));
    assert!(state(&["--jwt-secret=s"]).is_ok());
    assert!(state(&["--jwt-public-key-file", EC_PUB]).is_ok());
}

#[tokio::test]
async fn tokens_of_a_public_key_file_are_taken_and_others_refused() {
    let app = api_server::app(state(&["--jwt-public-key-file", EC_PUB]).unwrap());
    assert_eq!(list_rooms(&app, &es256(EC_KEY)).await, StatusCode::OK);
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({ "sub": "alice", "exp": u64::MAX / 2 }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    )
    .unwrap();
    assert_eq!(list_rooms(&app, &other_key).await, StatusCode::UNAUTHORIZED);
    let hs256 = chat_auth::jwt::mint(
        b"any-secret",
        &chat_auth::jwt::Claims {
            sub: "alice".into(),
            exp: u64::MAX / 2,
            iat: None,
            scope: None,
        },
    );
    assert_eq!(list_rooms(&app, &hs256).await, StatusCode::UNAUTHORIZED);
}
