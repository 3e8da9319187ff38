//! A JWKS served over real HTTP on loopback: tokens are verified by kid, a
//! rotated-in key is found through the refresh that its unknown kid asks
//! for, and a failed refresh keeps the last good keys.
//!
//! The periodic refresh is set to an hour, so every fetch after the first
//! one here is one that a token asked for. Waits are bounded only to turn a
//! hang into a failure; nothing is timed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chat_auth::{AuthError, ClaimChecks, JwksConfig, JwksSource, JwksStatus, TokenVerifier};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::sync::watch;

const RSA_A_KEY: &[u8] = include_bytes!("keys/rsa-a.key.pem");
const RSA_A_PUB: &[u8] = include_bytes!("keys/rsa-a.pub.pem");
const EC_A_KEY: &[u8] = include_bytes!("keys/ec-a.key.pem");
const EC_A_PUB: &[u8] = include_bytes!("keys/ec-a.pub.pem");
const RSA_B_KEY: &[u8] = include_bytes!("keys/rsa-b.key.pem");
const RSA_B_PUB: &[u8] = include_bytes!("keys/rsa-b.pub.pem");
const NOW: u64 = 1_000;
const WAIT: Duration = Duration::from_secs(20);

/// What the JWKS endpoint answers, changed by the test as it goes.
#[derive(Clone)]
struct Answer(Arc<Mutex<(StatusCode, String)>>);

impl Answer {
    fn set(&self, status: StatusCode, body: impl Into<String>) {
        *self.0.lock().unwrap() = (status, body.into());
    }
}

/// Serves `answer` at `/jwks.json` on 127.0.0.1; returns the URL.
async fn serve(answer: Answer) -> String {
    let app = Router::new()
        .route(
            "/jwks.json",
            get(|State(answer): State<Answer>| async move { answer.0.lock().unwrap().clone() }),
        )
        .with_state(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A JWKS with the given public keys under the given kids.
fn jwks(keys: &[(&str, &[u8])]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, pem)| {
            let key = DecodingKey::from_rsa_pem(pem)
                .or_else(|_| DecodingKey::from_ec_pem(pem))
                .unwrap();
            let mut jwk = Jwk::from_decoding_key(&key, None).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn token(alg: Algorithm, kid: &str, private_pem: &[u8]) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(private_pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &json!({ "sub": "alice", "exp": NOW + 60 }), &key).unwrap()
}

fn source(url: &str) -> JwksSource {
    JwksSource::spawn(JwksConfig {
        refresh_s: 3600,
        min_refresh_s: 0,
        ..JwksConfig::new(url)
    })
    .unwrap()
}

async fn wait_for(
    status: &mut watch::Receiver<JwksStatus>,
    what: &str,
    done: impl FnMut(&JwksStatus) -> bool,
) -> JwksStatus {
    tokio::time::timeout(WAIT, status.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("waiting for {what}"))
        .expect("the JWKS source is alive")
        .clone()
}

#[tokio::test]
async fn keys_are_found_by_kid_rotated_in_on_demand_and_kept_when_a_refresh_fails() {
    let answer = Answer(Arc::new(Mutex::new((
        StatusCode::OK,
        jwks(&[("k1", RSA_A_PUB)]),
    ))));
    let url = serve(answer.clone()).await;
    let jwks_source = source(&url);
    let mut status = jwks_source.subscribe();
    let verifier = TokenVerifier::new(
        Vec::new(),
        Some(jwks_source.clone()),
        ClaimChecks::default(),
    )
    .unwrap();
    wait_for(&mut status, "the first fetch", |s| s.fetches_ok == 1).await;
    assert_eq!(verifier.ready(), Ok(()));

    let k1 = token(Algorithm::RS256, "k1", RSA_A_KEY);
    assert_eq!(verifier.verify(&k1, NOW).unwrap().sub, "alice");
    // k1 is RS256: the same kid with another algorithm, or signed by another
    // key, is refused.
    assert_eq!(
        verifier.verify(&token(Algorithm::ES256, "k1", EC_A_KEY), NOW),
        Err(AuthError::Algorithm)
    );
    assert_eq!(
        verifier.verify(&token(Algorithm::RS256, "k1", RSA_B_KEY), NOW),
        Err(AuthError::Signature)
    );

    // The provider rotates: k1 out, k2 (EC) and k3 (RSA) in. A k2 token is
    // unknown until the refresh it asks for.
    answer.set(StatusCode::OK, jwks(&[("k2", EC_A_PUB), ("k3", RSA_B_PUB)]));
    let k2 = token(Algorithm::ES256, "k2", EC_A_KEY);
    assert_eq!(verifier.verify(&k2, NOW), Err(AuthError::UnknownKey));
    wait_for(&mut status, "the refresh asked for by k2", |s| {
        s.fetches_ok >= 2
    })
    .await;
    assert_eq!(verifier.verify(&k2, NOW).unwrap().sub, "alice");
    let k3 = token(Algorithm::RS256, "k3", RSA_B_KEY);
    assert!(verifier.verify(&k3, NOW).is_ok());
    assert_eq!(verifier.verify(&k1, NOW), Err(AuthError::UnknownKey));

    // Failed refreshes (an HTTP error, an empty set, not a JWKS) keep the
    // last good keys.
    let mut failed = status.borrow().fetches_failed;
    for (code, body) in [
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            jwks(&[("k4", RSA_A_PUB)]),
        ),
        (StatusCode::OK, r#"{"keys":[]}"#.to_owned()),
        (StatusCode::OK, "<html>".to_owned()),
    ] {
        answer.set(code, body);
        let k4 = token(Algorithm::RS256, "k4", RSA_A_KEY);
        assert_eq!(verifier.verify(&k4, NOW), Err(AuthError::UnknownKey));
        let seen = wait_for(&mut status, "a failed refresh", |s| {
            s.fetches_failed > failed
        })
        .await;
        failed = seen.fetches_failed;
        assert!(seen.last_error.is_some());
        assert_eq!(seen.keys, 2);
        assert!(verifier.verify(&k2, NOW).is_ok(), "k2 kept");
        assert!(verifier.verify(&k3, NOW).is_ok(), "k3 kept");
    }
}

#[tokio::test]
async fn a_jwks_that_never_loaded_makes_the_verifier_unready() {
    let answer = Answer(Arc::new(Mutex::new((
        StatusCode::SERVICE_UNAVAILABLE,
        String::new(),
    ))));
    let url = serve(answer.clone()).await;
    let jwks_source = source(&url);
    let mut status = jwks_source.subscribe();
    let verifier =
        TokenVerifier::new(Vec::new(), Some(jwks_source), ClaimChecks::default()).unwrap();
    wait_for(&mut status, "a failed fetch", |s| s.fetches_failed >= 1).await;
    let reason = verifier.ready().unwrap_err();
    assert!(reason.contains("not loaded yet"), "{reason}");
    assert!(reason.contains("503"), "{reason}");
    let k1 = token(Algorithm::RS256, "k1", RSA_A_KEY);
    assert_eq!(verifier.verify(&k1, NOW), Err(AuthError::UnknownKey));

    // The provider comes back; the next fetch (asked for by the unknown kid,
    // or the retry) loads it.
    answer.set(StatusCode::OK, jwks(&[("k1", RSA_A_PUB)]));
    verifier.verify(&k1, NOW).unwrap_err();
    wait_for(&mut status, "a successful fetch", |s| s.fetches_ok >= 1).await;
    assert_eq!(verifier.ready(), Ok(()));
    assert!(verifier.verify(&k1, NOW).is_ok());
}
