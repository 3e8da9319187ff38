//! Tokens from an identity provider, through the real `api-server` binary:
//! RS256 from a public key file, ES256 from a JWKS served on loopback, and
//! the forgeries the verifier exists to refuse, each answered with the
//! contract's 401 `unauthorized`. The API server runs alone on its
//! in-memory store: no Redis, no chat servers (only REST is exercised).

use std::path::PathBuf;

use axum::routing::get;
use e2e::{assert_error, now_ms, start_api_with, workspace_root, Api, Process};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "chat";

fn key_file(name: &str) -> PathBuf {
    workspace_root()
        .join("crates/chat-auth/tests/keys")
        .join(name)
}

fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Serves a JWKS with `ec-a` as kid `idp-1`; returns its URL.
async fn serve_jwks() -> String {
    let public = DecodingKey::from_ec_pem(&read_key("ec-a.pub.pem")).unwrap();
    let mut jwk = Jwk::from_decoding_key(&public, Some(Algorithm::ES256)).unwrap();
    jwk.common.key_id = Some("idp-1".into());
    let body = json!({ "keys": [jwk] });
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || async move { axum::Json(body.clone()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Starts the API server with the RSA key file and the JWKS (its
/// `/readyz` waits for the JWKS).
async fn start_api(jwks_url: &str) -> (Process, String) {
    let args = [
        format!(
            "--jwt-public-key-file={}",
            key_file("rsa-a.pub.pem").display()
        ),
        format!("--jwt-jwks-url={jwks_url}"),
        format!("--jwt-issuer={ISSUER}"),
        format!("--jwt-audience={AUDIENCE}"),
        "--ticket-secret=e2e-ticket".to_owned(),
        "--internal-secret=e2e-internal".to_owned(),
    ];
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    start_api_with(&env, &args).await
}

fn claims(sub: &str) -> Value {
    let now_s = now_ms() / 1000;
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now_s, "exp": now_s + 600 })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_work_on_rest_and_forgeries_get_401() {
    let jwks_url = serve_jwks().await;
    let (_api, api_url) = start_api(&jwks_url).await;
    let rsa_a = EncodingKey::from_rsa_pem(&read_key("rsa-a.key.pem")).unwrap();
    let rsa_b = EncodingKey::from_rsa_pem(&read_key("rsa-b.key.pem")).unwrap();
    let ec_a = EncodingKey::from_ec_pem(&read_key("ec-a.key.pem")).unwrap();

    // RS256 signed with the key whose public half is the key file; ES256
    // with the JWKS key, named by kid.
    for (what, token) in [
        (
            "RS256, key file",
            sign(Algorithm::RS256, None, &rsa_a, &claims("alice")),
        ),
        (
            "ES256, JWKS kid",
            sign(Algorithm::ES256, Some("idp-1"), &ec_a, &claims("alice")),
        ),
    ] {
        let (status, body) = Api::with_token(&api_url, "alice", &token).rooms().await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["rooms"], json!([]), "{what}");
    }

    let mut wrong_audience = claims("alice");
    wrong_audience["aud"] = json!("another-service");
    let mut no_issuer = claims("alice");
    no_issuer.as_object_mut().unwrap().remove("iss");
    let rsa_public_as_secret = EncodingKey::from_secret(&read_key("rsa-a.pub.pem")).unwrap();
    let forged: Vec<(&str, String)> = vec![
        (
            "RS256 signed by another key",
            sign(Algorithm::RS256, None, &rsa_b, &claims("alice")),
        ),
        (
            "RS256 naming the ES256 key's kid",
            sign(Algorithm::RS256, Some("idp-1"), &rsa_a, &claims("alice")),
        ),
        (
            "HS256 keyed with the RSA public key file",
            sign(
                Algorithm::HS256,
                None,
                &rsa_public_as_secret,
                &claims("alice"),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                b64url(claims("alice").to_string().as_bytes())
            ),
        ),
        (
            "unknown kid",
            sign(Algorithm::ES256, Some("idp-9"), &ec_a, &claims("alice")),
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, None, &rsa_a, &wrong_audience),
        ),
        (
            "no issuer",
            sign(Algorithm::RS256, None, &rsa_a, &no_issuer),
        ),
    ];
    for (what, token) in &forged {
        let got = e2e::http_call(
            Method::GET,
            &format!("{api_url}/v1/rooms"),
            Some(&format!("Bearer {token}")),
            None,
        )
        .await;
        eprintln!("MSG {what}: {}", got.1);
        assert_error(&got, 401, "unauthorized", what);
    }
}
