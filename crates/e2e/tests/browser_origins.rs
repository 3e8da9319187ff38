//! Browser apps on other origins (issue 10, section 3), checked at the HTTP
//! level: the local mode answers CORS preflights from loopback pages on any
//! port out of the box, refuses other origins, and its chat servers check
//! the WebSocket handshake's `Origin` against the same list. (The console's
//! browser tests load a real page from a second origin.)

use e2e::serde_json::Value;
use e2e::{ticket_url, Api, LocalSystem, WAIT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn preflight(api_url: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{api_url}/v1/rooms"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

/// Opens the WebSocket of a fresh ticket with `origin`; the HTTP status of
/// a refused handshake, or 101.
async fn handshake_status(api: &Api, origin: Option<&str>) -> u16 {
    // The test's own chat servers only (a shared Redis Cluster lists
    // those of other tests too).
    let connect = e2e::eventually(
        WAIT,
        "a ticket for one of this test's chat servers",
        || async move {
            let (status, connect) = api.connect().await;
            assert_eq!(status, 200, "{connect}");
            let server = connect["server_id"].as_str().unwrap_or_default().to_owned();
            let ours = api
                .allowed_servers
                .as_ref()
                .is_none_or(|ids| ids.contains(&server));
            ours.then_some(connect)
        },
    )
    .await;
    let url = ticket_url(
        connect["url"].as_str().unwrap(),
        connect["ticket"].as_str().unwrap(),
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((_ws, response))) => response.status().as_u16(),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            if response.status().as_u16() == 403 {
                assert_eq!(body["error"]["code"], "forbidden", "{body}");
            }
            response.status().as_u16()
        }
        other => panic!("handshake: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_serves_loopback_origins_and_refuses_others() {
    let local = LocalSystem::start(&[]).await;
    let dev_server = "http://localhost:5173";
    let answer = preflight(&local.api_url, dev_server).await;
    assert_eq!(answer.status().as_u16(), 204);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        dev_server,
        "a loopback dev server is allowed by default"
    );
    let evil = preflight(&local.api_url, "https://evil.example").await;
    assert!(
        !evil.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        evil.headers()
    );

    let alice = Api::login(&local.api_url, &e2e::unique("alice")).await;
    assert_eq!(handshake_status(&alice, Some(dev_server)).await, 101);
    assert_eq!(
        handshake_status(&alice, None).await,
        101,
        "non-browser clients send no Origin"
    );
    assert_eq!(
        handshake_status(&alice, Some("https://evil.example")).await,
        403
    );

    // The console is served at / from the binary.
    let page = reqwest::get(format!("{}/", local.api_url)).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers().contains_key("content-security-policy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_are_a_flag() {
    let app = "https://app.example.com";
    let local = LocalSystem::start(&["--cors-origins", app, "--open", "false"]).await;
    let answer = preflight(&local.api_url, app).await;
    assert_eq!(answer.headers()["access-control-allow-origin"], app);
    let loopback = preflight(&local.api_url, "http://localhost:5173").await;
    assert!(!loopback
        .headers()
        .contains_key("access-control-allow-origin"));
    let alice = Api::login(&local.api_url, &e2e::unique("alice")).await;
    assert_eq!(handshake_status(&alice, Some(app)).await, 101);
    assert_eq!(
        handshake_status(&alice, Some("http://localhost:5173")).await,
        403
    );
}

/// A chat server without `--cors-origins` does not check `Origin`: the
/// ticket alone admits, as in contract v1.0 (a page on another origin
/// cannot obtain a ticket: `/v1/connect` needs the user's token and CORS).
/// With the list set, it checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_chat_servers_check_origins_only_when_configured() {
    let Some(mut cluster) = e2e::Cluster::start(1, &[]).await else {
        return;
    };
    let mut alice = cluster.api(&e2e::unique("alice")).await;
    assert_eq!(
        handshake_status(&alice, Some("https://anywhere.example")).await,
        101
    );
    let app = "https://app.example.com";
    let checked = cluster.add_chat_server(&["--cors-origins", app]).await;
    let checked_id = cluster.chat[checked].id.clone();
    alice.allowed_servers = Some(vec![checked_id]);
    assert_eq!(handshake_status(&alice, Some(app)).await, 101);
    assert_eq!(
        handshake_status(&alice, Some("https://anywhere.example")).await,
        403
    );
}
