//! The `chat` binary against a real `chat-local` (built beforehand with
//! `cargo build --workspace --bins`), and against a fake service that
//! answers outside the contract. Needs no Redis.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use support::{assert_fails, room_id, Home, Tail, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_from_one_process_while_tail_in_another_prints_it() {
    let local = e2e::LocalSystem::start(&[]).await;
    let alice = Home::new(&local.api_url);
    let bob = Home::new(&local.api_url);
    let out = alice.ok(&["login", "alice"]).await;
    assert!(out.contains("logged in as alice"), "{out}");
    bob.ok(&["login", "bob"]).await;
    let room = room_id(
        &alice
            .ok(&["room", "create", "general", "--members", "bob"])
            .await,
    );

    let mut tail = Tail::start(&bob, &["tail", &room, "-v"]);
    tail.connected_to(WAIT).await;
    alice.ok(&["send", &room, "hello bob"]).await;
    let out = alice
        .run_with_stdin(&["send", &room], Some("line one\nline two\n\nline three\n"))
        .await;
    assert!(out.status.success(), "{out:?}");
    let lines = tail.stdout_lines(4, WAIT).await;
    assert_eq!(
        lines,
        [
            "1 alice: hello bob",
            "2 alice: line one",
            "3 alice: line two",
            "4 alice: line three"
        ]
    );

    // A second tail replays from a seq, as JSON lines, and stops after --count.
    let out = bob
        .ok(&["tail", &room, "--after", "2", "--count", "2", "--json"])
        .await;
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [3, 4]);

    // Read state: bob reads everything, his unread count drops to 0.
    let out = bob.ok(&["read", &room]).await;
    assert_eq!(out.trim(), format!("{room} read up to 4"));
    let rooms: Value = serde_json::from_str(&bob.ok(&["rooms", "--json"]).await).unwrap();
    assert_eq!(rooms[0]["unread"], 0, "{rooms}");
    tail.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_of_every_command_parses() {
    let local = e2e::LocalSystem::start(&[]).await;
    let alice = Home::new(&local.api_url);
    let login: Value =
        serde_json::from_str(&alice.ok(&["login", "alice", "--json"]).await).unwrap();
    assert_eq!(login["user"], "alice");
    let parse = |text: String| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let room = &parse(
        alice
            .ok(&["room", "create", "ops", "--members", "bob,carol", "--json"])
            .await,
    )[0];
    assert_eq!(room["member_count"], 3);
    let id = room["id"].as_str().unwrap().to_owned();
    let sent = parse(alice.ok(&["send", &id, "one", "--json"]).await);
    assert_eq!(sent[0]["seq"], 1);
    assert_eq!(sent[0]["from"], "alice");
    let sent = parse(
        alice
            .run_with_stdin(&["send", &id, "--json"], Some("two\nthree\n"))
            .await
            .stdout
            .into_iter()
            .map(char::from)
            .collect(),
    );
    assert_eq!(sent.len(), 2, "one JSON value per line");
    for args in [
        vec!["rooms", "--json"],
        vec!["room", "show", &id, "--json"],
        vec!["members", &id, "--json"],
        vec!["history", &id, "--json"],
        vec!["history", &id, "--before", "3", "--limit", "1", "--json"],
        vec!["history", &id, "--after", "1", "--json"],
        vec!["read", &id, "2", "--json"],
        vec!["reads", &id, "--json"],
        vec!["servers", "--json"],
        vec!["room", "add", &id, "dave", "--json"],
    ] {
        let values = parse(alice.ok(&args).await);
        assert!(!values.is_empty(), "{args:?}");
    }
    let history = parse(alice.ok(&["history", &id, "--json"]).await);
    assert_eq!(
        history
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let before = parse(
        alice
            .ok(&["history", &id, "--before", "3", "--limit", "1", "--json"])
            .await,
    );
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["seq"], 2);
    let servers = parse(alice.ok(&["servers", "--json"]).await);
    assert_eq!(servers[0].as_array().unwrap().len(), 2);
    let completions = alice.ok(&["completions", "bash"]).await;
    assert!(completions.contains("_chat"), "a bash completion script");
}

fn expired_token(user: &str) -> String {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        enc.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        enc.encode(format!(r#"{{"sub":"{user}","exp":1000000000}}"#))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_on_stderr_and_a_meaningful_exit_code() {
    let local = e2e::LocalSystem::start(&[]).await;
    let alice = Home::new(&local.api_url);
    let nobody = Home::new(&local.api_url);

    // Not logged in.
    assert_fails(&nobody.run(&["rooms"]).await, 3, "not logged in");
    alice.ok(&["login", "alice"]).await;
    // Unknown rooms.
    for args in [
        vec!["members", "r_doesnotexist"],
        vec!["tail", "r_doesnotexist"],
        vec!["history", "r_doesnotexist"],
        vec!["read", "r_doesnotexist"],
        vec!["send", "r_doesnotexist", "hi"],
    ] {
        assert_fails(&alice.run(&args).await, 2, &format!("{args:?}"));
    }
    // Expired and refused tokens.
    let expired = expired_token("alice");
    let line = assert_fails(
        &alice.run(&["rooms", "--token", &expired]).await,
        3,
        "expired",
    );
    assert!(line.contains("expired"), "{line}");
    assert_fails(
        &alice.run(&["tail", "r_x", "--token", "not-a-token"]).await,
        3,
        "refused token",
    );
    // An unreachable API.
    let closed = format!("http://127.0.0.1:{}", e2e::free_port());
    for args in [vec!["rooms"], vec!["login", "alice"], vec!["tail", "r_x"]] {
        let mut args = args.clone();
        args.extend(["--api", &closed, "--token", "t"]);
        assert_fails(
            &alice.run(&args).await,
            4,
            &format!("unreachable: {args:?}"),
        );
    }
    // Bad usage.
    assert_fails(&alice.run(&["send", "r_x", ""]).await, 1, "empty body");
    assert_fails(
        &alice
            .run(&["room", "create", "x", "--members", "bad user"])
            .await,
        1,
        "bad member",
    );
    let out = alice.run(&["history", "r_x", "--limit", "0"]).await;
    assert_eq!(out.status.code(), Some(1), "clap usage errors exit 1");
    let out = alice.run(&["frobnicate"]).await;
    assert_eq!(out.status.code(), Some(1));
}

/// A fake API and chat server on one port: REST answers from a table, and a
/// WebSocket that welcomes, then sends a frame outside the contract.
async fn fake_service(bad_frame: &'static str) -> String {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut peek = [0u8; 8];
                let n = stream.peek(&mut peek).await.unwrap_or(0);
                if &peek[..n.min(7)] == b"GET /ws" {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    use tokio_tungstenite::tungstenite::Message as M;
                    let welcome =
                        r#"{"type":"welcome","server_id":"fake","user":"alice","session":"s1"}"#;
                    let _ = ws.send(M::text(welcome)).await;
                    let _ = ws.send(M::text(bad_frame)).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let line = head.lines().next().unwrap_or("").to_owned();
                let (status, body) = if line.starts_with("GET /v1/rooms/") {
                    (
                        "200 OK",
                        r#"{"id":"r_fake","name":"x","created_by":"alice","created_at":1,"member_count":1,"last_seq":0,"read_seq":0,"unread":0}"#.to_string(),
                    )
                } else if line.starts_with("POST /v1/connect") {
                    (
                        "200 OK",
                        format!(
                            r#"{{"url":"ws://127.0.0.1:{port}/ws","ticket":"t","server_id":"fake","expires_in_ms":30000}}"#
                        ),
                    )
                } else {
                    (
                        "200 OK",
                        "<html>\n<body>not the chat API</body>\n</html>".to_string(),
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_and_frames_are_one_line_and_exit_5() {
    for bad in [
        "{not json",
        r#"{"type":"message","room":"r_fake","seq":"one"}"#,
        r#"{"type":"no_such_frame"}"#,
    ] {
        let api = fake_service(bad).await;
        let home = Home::new(&api);
        let out = home.run(&["tail", "r_fake", "--token", "t"]).await;
        let line = assert_fails(&out, 5, &format!("frame {bad}"));
        assert!(line.contains("malformed frame"), "{line}");
    }
    let api = fake_service("{}").await;
    let home = Home::new(&api);
    let line = assert_fails(
        &home.run(&["rooms", "--token", "t"]).await,
        5,
        "HTML answer",
    );
    assert!(line.contains("not the contract"), "{line}");
}
