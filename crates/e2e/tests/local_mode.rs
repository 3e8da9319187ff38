//! The README's first command, tested the way a newcomer uses it: start
//! `chat-local`, then act as a client written only from PROTOCOL.md (raw
//! reqwest and tokio-tungstenite, none of the harness helpers). Needs no
//! Redis: the local mode embeds the in-memory store.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The child's logs, kept for reading after a failure.
fn log_file(name: &str) -> std::fs::File {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(name)).unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame, skipping v1.1's presence events: this client reads the
/// v1.0 contract, and v1.1 only adds frames (a member connecting or leaving
/// may announce itself between any two frames this test waits for).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame ok");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["type"] != "presence" {
                return value;
            }
        }
    }
}

async fn token(http: &reqwest::Client, api: &str, user: &str) -> Option<String> {
    let response = http
        .post(format!("{api}/v1/auth/token"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .ok()?;
    let v: Value = response.json().await.ok()?;
    v["token"].as_str().map(str::to_owned)
}

async fn connect(http: &reqwest::Client, api: &str, token: &str) -> (Ws, Value) {
    let c: Value = http
        .post(format!("{api}/v1/connect"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "{}?ticket={}",
        c["url"].as_str().unwrap(),
        c["ticket"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    (ws, welcome)
}

#[tokio::test]
async fn local_mode_serves_the_contract_and_drains_on_sigterm() {
    let (api_port, chat_a, chat_b) = (free_port(), free_port(), free_port());
    let mut child = tokio::process::Command::new(binary("chat-local"))
        .arg(format!("--api-port={api_port}"))
        .arg(format!("--chat-ports={chat_a},{chat_b}"))
        .env("RUST_LOG", "info,chat_routing=debug")
        .envs(e2e::PLACEMENT_BY_LOAD)
        .stdout(Stdio::null())
        .stderr(log_file("local_mode.log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-local");
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();

    // Ready once the API answers and both chat servers have reported.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let alice = loop {
        if let Some(t) = token(&http, &api, "alice").await {
            let servers: Value = http
                .get(format!("{api}/v1/servers"))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if servers["servers"].as_array().map_or(0, |s| s.len()) == 2 {
                break t;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chat-local did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bob = token(&http, &api, "bob").await.unwrap();

    let room: Value = http
        .post(format!("{api}/v1/rooms"))
        .bearer_auth(&alice)
        .json(&json!({"name": "general", "members": ["bob"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room_id = room["id"].as_str().unwrap().to_owned();
    assert_eq!(room["member_count"], 2);

    let (mut ws_alice, welcome_a) = connect(&http, &api, &alice).await;
    let (mut ws_bob, welcome_b) = connect(&http, &api, &bob).await;
    assert_ne!(
        welcome_a["server_id"], welcome_b["server_id"],
        "two connects in a row land on the two chat servers (placement by load)"
    );

    ws_alice
        .send(Message::text(
            json!({"type":"send","room":room_id,"body":"hello","client_msg_id":"c1"}).to_string(),
        ))
        .await
        .unwrap();
    let ack = next_json(&mut ws_alice).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["client_msg_id"], "c1");
    let own = next_json(&mut ws_alice).await;
    assert_eq!(
        (own["type"].as_str(), own["seq"].as_u64()),
        (Some("message"), Some(1))
    );
    let got = next_json(&mut ws_bob).await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["body"], "hello");
    assert_eq!(got["from"], "alice");

    let history: Value = http
        .get(format!("{api}/v1/rooms/{room_id}/messages?after=0"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["id"], ack["id"]);

    // SIGTERM: every client is told to reconnect, closed with 1012, and the
    // process exits by itself.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    for ws in [&mut ws_alice, &mut ws_bob] {
        let reconnect = next_json(ws).await;
        assert_eq!(reconnect["type"], "reconnect");
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Close(Some(frame)) = frame {
                    return Some(u16::from(frame.code));
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(close, Some(1012));
    }
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("chat-local exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
