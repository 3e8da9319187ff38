//! Bad input never crashes a process, never partially applies and is
//! answered with the contract's errors: tokens, WebSocket tickets,
//! WebSocket frames, REST bodies and queries, idempotent sends.

use std::collections::BTreeSet;
use std::time::Duration;

use chat_auth::jwt::Claims;
use chat_auth::ticket::Ticket;
use e2e::{
    assert_error, http_call, member_ids, now_ms, ok_body, seqs, ticket_url, unique, ws_open, Api,
    Cluster, OpenError, WsClient, JWT_SECRET, TICKET_SECRET, WAIT,
};
use reqwest::Method;
use serde_json::{json, Value};

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn jwt(secret: &str, sub: &str, exp_s: u64) -> String {
    chat_auth::jwt::mint(
        secret.as_bytes(),
        &Claims {
            sub: sub.to_owned(),
            exp: exp_s,
            iat: Some(now_ms() / 1000),
            scope: None,
        },
    )
}

/// Flips one character in the middle of the signature segment.
fn tamper_signature(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let Some(cluster) = Cluster::start(0, &[]).await else {
        return;
    };
    let user = unique("mallory");
    let now_s = now_ms() / 1000;

    // Sanity: a token the test mints with the configured secret works.
    let good = jwt(JWT_SECRET, &user, now_s + 3600);
    let api = Api::with_token(&cluster.api_url, &user, &good);
    let (status, body) = api.rooms().await;
    assert_eq!(status, 200, "self-minted valid token refused: {body}");
    assert_eq!(body["rooms"], json!([]));

    let payload = b64url(
        json!({ "sub": user, "exp": now_s + 3600 })
            .to_string()
            .as_bytes(),
    );
    let bad_auth: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("garbage token", Some("Bearer garbage".into())),
        ("three garbage segments", Some("Bearer a.b.c".into())),
        ("not a bearer scheme", Some(format!("Basic {good}"))),
        (
            "other secret",
            Some(format!(
                "Bearer {}",
                jwt("another-secret", &user, now_s + 3600)
            )),
        ),
        (
            "tampered signature",
            Some(format!("Bearer {}", tamper_signature(&good))),
        ),
        (
            "expired",
            Some(format!("Bearer {}", jwt(JWT_SECRET, &user, now_s - 3600))),
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{payload}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#)
            )),
        ),
        (
            "payload swapped under a valid signature",
            Some({
                let other = jwt(JWT_SECRET, "someone-else", now_s + 3600);
                let parts: Vec<&str> = other.split('.').collect();
                format!("Bearer {}.{payload}.{}", parts[0], parts[2])
            }),
        ),
        (
            "invalid subject",
            Some(format!(
                "Bearer {}",
                jwt(JWT_SECRET, "not a user", now_s + 3600)
            )),
        ),
    ];
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/rooms".into(), None),
        (
            Method::POST,
            "/v1/rooms".into(),
            Some(json!({ "name": "sneaky" })),
        ),
        (Method::POST, "/v1/connect".into(), None),
        (Method::GET, "/v1/servers".into(), None),
        (Method::GET, "/v1/rooms/r_0123/messages".into(), None),
    ];
    for (what, auth) in &bad_auth {
        for (method, path, body) in &endpoints {
            let got = http_call(
                method.clone(),
                &format!("{}{path}", cluster.api_url),
                auth.as_deref(),
                body.as_ref()
                    .map(|b| (b.to_string().into_bytes(), "application/json")),
            )
            .await;
            assert_error(
                &got,
                401,
                "unauthorized",
                &format!("{what}: {method} {path}"),
            );
        }
    }
    // None of the refused room creations happened.
    let (status, body) = api.rooms().await;
    assert_eq!(status, 200);
    assert_eq!(
        body["rooms"],
        json!([]),
        "a refused POST /v1/rooms created a room"
    );
}

fn assert_refused(result: Result<e2e::chat_client::raw::RawSession, OpenError>, what: &str) {
    match result {
        Err(OpenError::Status(401)) => {}
        Err(e) => panic!("{what}: expected HTTP 401 before the upgrade, got {e:?}"),
        Ok(_) => panic!("{what}: the WebSocket was opened"),
    }
}

/// `/v1/connect` until it names one of `ids` (this test's servers).
async fn connect_own(api: &Api, ids: &[String]) -> Value {
    for _ in 0..100 {
        let (status, body) = api.connect().await;
        assert_eq!(status, 200, "/v1/connect: {body}");
        if ids.iter().any(|id| body["server_id"] == id.as_str()) {
            return body;
        }
    }
    panic!("/v1/connect never named one of {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_checked() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let user = unique("alice");
    let api = cluster.api(&user).await;
    let (a, b) = (&cluster.chat[0], &cluster.chat[1]);

    assert_refused(ws_open(&a.ws_url()).await, "missing ticket");
    assert_refused(ws_open(&ticket_url(&a.ws_url(), "")).await, "empty ticket");
    assert_refused(
        ws_open(&ticket_url(&a.ws_url(), "garbage")).await,
        "garbage ticket",
    );
    assert_refused(
        ws_open(&ticket_url(&a.ws_url(), "a.b")).await,
        "garbage ticket with a dot",
    );

    let expired = chat_auth::ticket::mint(
        TICKET_SECRET.as_bytes(),
        &Ticket {
            id: unique("t"),
            user: user.clone(),
            server_id: a.id.clone(),
            expires_at_ms: now_ms() - 60_000,
            issued_at_ms: Some(now_ms() - 90_000),
        },
    );
    assert_refused(
        ws_open(&ticket_url(&a.ws_url(), &expired)).await,
        "expired ticket",
    );
    let forged = chat_auth::ticket::mint(
        b"not-the-ticket-secret",
        &Ticket {
            id: unique("t"),
            user: user.clone(),
            server_id: a.id.clone(),
            expires_at_ms: now_ms() + 60_000,
            issued_at_ms: Some(now_ms()),
        },
    );
    assert_refused(
        ws_open(&ticket_url(&a.ws_url(), &forged)).await,
        "forged ticket",
    );
    let signed = |issued_at_ms: Option<u64>| {
        chat_auth::ticket::mint(
            TICKET_SECRET.as_bytes(),
            &Ticket {
                id: unique("t"),
                user: user.clone(),
                server_id: a.id.clone(),
                expires_at_ms: now_ms() + 60_000,
                issued_at_ms,
            },
        )
    };
    // Valid, but issued before the server started: the server cannot know
    // whether its previous process took it.
    assert_refused(
        ws_open(&ticket_url(
            &a.ws_url(),
            &signed(Some(now_ms() - 3_600_000)),
        ))
        .await,
        "ticket issued before the server started",
    );
    // Without an issue time (as API servers from before mint them), single
    // use is the store's pending entry, and none was written.
    assert_refused(
        ws_open(&ticket_url(&a.ws_url(), &signed(None))).await,
        "ticket without a pending entry",
    );

    // A real ticket from /v1/connect, presented to the other server.
    let target = connect_own(&api, &cluster.ids()).await;
    let other = if target["server_id"] == a.id.as_str() {
        b
    } else {
        a
    };
    let ticket = target["ticket"].as_str().unwrap();
    assert_refused(
        ws_open(&ticket_url(&other.ws_url(), ticket)).await,
        "ticket for another chat server",
    );

    // A fresh ticket works once, then never again.
    let body = connect_own(&api, &cluster.ids()).await;
    let url = ticket_url(
        body["url"].as_str().unwrap(),
        body["ticket"].as_str().unwrap(),
    );
    let mut first = WsClient::open(&url)
        .await
        .unwrap_or_else(|e| panic!("a fresh ticket was refused: {e:?}"));
    assert_eq!(first.user, user);
    assert_refused(
        ws_open(&url).await,
        "ticket used a second time (first session open)",
    );
    first.ping(json!(1)).await;
    first.close().await;
    assert_refused(
        ws_open(&url).await,
        "ticket used a second time (first session closed)",
    );

    // Both servers still serve.
    for server in [a, b] {
        let mut ws = WsClient::connect_to(&api, &server.id).await;
        ws.ping(json!("ok")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_checked() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("alice's", &[]).await;
    let bobs_room = bob.create_room_id("bob's", &[]).await;
    bob.send(&bobs_room, "private").await;
    let mut ws = WsClient::connect(&alice).await;

    for (what, text) in [
        ("bad JSON", "this is not json".to_owned()),
        ("truncated JSON", "{\"type\":\"send\"".to_owned()),
        ("JSON array", "[]".to_owned()),
        ("no type", json!({ "room": room }).to_string()),
        ("unknown type", json!({ "type": "explode" }).to_string()),
        (
            "send without body",
            json!({ "type": "send", "room": room }).to_string(),
        ),
    ] {
        ws.send_text(text.clone()).await.expect("send");
        let err = ws
            .next_of_type("error", WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: no error frame"));
        assert_eq!(err["code"], "invalid_frame", "{what}: {err}");
        assert!(err["message"].is_string(), "{what}: {err}");
        // The connection stays open.
        ws.ping(json!({ "after": what })).await;
    }

    let big = "a".repeat(4097);
    ws.send_message(&room, &big, Some("too-big")).await;
    let err = ws
        .next_of_type("error", WAIT)
        .await
        .expect("no error for a 4097-byte body");
    assert_eq!(err["code"], "invalid_request", "{err}");
    assert_eq!(err["client_msg_id"], "too-big", "{err}");
    ws.send_message(&room, "", Some("empty")).await;
    let err = ws
        .next_of_type("error", WAIT)
        .await
        .expect("no error for an empty body");
    assert_eq!(err["code"], "invalid_request", "{err}");
    assert_eq!(err["client_msg_id"], "empty", "{err}");
    assert!(
        alice.all_messages(&room).await.is_empty(),
        "a refused send was stored"
    );

    // 4096 bytes (2048 two-byte characters) is fine.
    let max = "é".repeat(2048);
    ws.send_message(&room, &max, Some("max")).await;
    let ack = ws
        .next_of_type("ack", WAIT)
        .await
        .expect("no ack for a 4096-byte body");
    assert_eq!(ack["client_msg_id"], "max");
    assert_eq!(ack["seq"], 1);

    // Not a member: forbidden, and nothing stored.
    ws.send_message(&bobs_room, "let me in", Some("intruder"))
        .await;
    let err = ws
        .next_of_type("error", WAIT)
        .await
        .expect("no error for a non-member send");
    assert_eq!(err["code"], "forbidden", "{err}");
    if !err["client_msg_id"].is_null() {
        assert_eq!(err["client_msg_id"], "intruder", "{err}");
    }
    let history = bob.all_messages(&bobs_room).await;
    assert_eq!(
        seqs(&history),
        vec![1],
        "history of bob's room changed: {history:?}"
    );
    // A room that does not exist is refused too.
    ws.send_message(
        "r_00000000000000000000000000000000",
        "hello?",
        Some("nowhere"),
    )
    .await;
    let err = ws
        .next_of_type("error", WAIT)
        .await
        .expect("no error for a send to no room");
    assert!(
        err["code"] == "forbidden" || err["code"] == "not_found",
        "send to a room that does not exist: {err}"
    );
    ws.ping(json!("still open")).await;

    // Typing into someone else's room is not relayed.
    let mut bws = WsClient::connect(&bob).await;
    ws.send_json(json!({ "type": "typing", "room": bobs_room }))
        .await;
    ws.ping(json!("after typing")).await;
    let leaked = bws.frames_for(Duration::from_secs(2)).await;
    assert!(
        !leaked.iter().any(|v| v["type"] == "typing"),
        "a non-member's typing was relayed: {leaked:?}"
    );

    // Resume of a room the user is not in is refused and reveals nothing:
    // a `forbidden` error, then a `resumed` that does not name the room.
    ws.send_json(json!({ "type": "resume", "rooms": { bobs_room.clone(): 0 } }))
        .await;
    let (frames, resumed) = ws.read_until(WAIT, |v| v["type"] == "resumed").await;
    let resumed = resumed.unwrap_or_else(|| panic!("no resumed frame; frames: {frames:?}"));
    assert!(
        frames
            .iter()
            .any(|v| v["type"] == "error" && v["code"] == "forbidden"),
        "resume of another user's room was not refused with forbidden: {frames:?}"
    );
    assert_eq!(
        resumed["rooms"],
        json!({}),
        "resumed names another user's room: {resumed}"
    );
    assert!(
        !frames
            .iter()
            .any(|v| v["type"] == "message" && v["room"] == bobs_room.as_str()),
        "resume leaked another room's messages: {frames:?}"
    );

    // A frame over 64 KiB closes the connection with 1009.
    let huge = json!({ "type": "send", "room": room, "body": "x".repeat(70_000) }).to_string();
    let _ = ws.send_text(huge).await;
    let (_, code) = ws.wait_closed(WAIT).await;
    assert_eq!(
        code,
        Some(1009),
        "close code for an oversize frame ({:?})",
        ws.close_error
    );
    assert_eq!(seqs(&alice.all_messages(&room).await), vec![1]);

    // The server is fine afterwards.
    let mut again = WsClient::connect_to(&alice, &ws.server_id).await;
    again.ping(json!("after 1009")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_input_is_checked() {
    let Some(cluster) = Cluster::start(0, &[]).await else {
        return;
    };
    let (alice_id, bob_id, mallory_id) = (unique("alice"), unique("bob"), unique("mallory"));
    let alice = Api::login(&cluster.api_url, &alice_id).await;
    let bob = Api::login(&cluster.api_url, &bob_id).await;
    let mallory = Api::login(&cluster.api_url, &mallory_id).await;
    let room = alice.create_room_id("checked", &[&bob_id]).await;
    let path = format!("/v1/rooms/{room}/messages");

    // Bodies.
    assert_error(
        &alice.post_message(&room, &"a".repeat(4097), None).await,
        400,
        "invalid_request",
        "4097-byte body",
    );
    assert_error(
        &alice.post_message(&room, &"é".repeat(2049), None).await,
        400,
        "invalid_request",
        "4098-byte body",
    );
    assert_error(
        &alice.post_message(&room, "", None).await,
        400,
        "invalid_request",
        "empty body",
    );
    let big = json!({ "body": "x".repeat(70_000) })
        .to_string()
        .into_bytes();
    assert_error(
        &alice
            .call_raw(Method::POST, &path, big, "application/json")
            .await,
        413,
        "payload_too_large",
        "request over 64 KiB",
    );
    for (what, raw) in [
        ("bad JSON", "{\"body\": "),
        ("not JSON", "hello"),
        ("no body field", "{}"),
        ("body is a number", "{\"body\": 5}"),
        ("JSON array", "[]"),
        ("empty request", ""),
    ] {
        assert_error(
            &alice
                .call_raw(
                    Method::POST,
                    &path,
                    raw.as_bytes().to_vec(),
                    "application/json",
                )
                .await,
            400,
            "invalid_request",
            what,
        );
    }
    assert!(
        alice.all_messages(&room).await.is_empty(),
        "a refused post was stored"
    );
    let m1 = alice.send(&room, &"a".repeat(4096)).await;
    assert_eq!(m1["seq"], 1);
    alice.send(&room, "two").await;
    alice.send(&room, "three").await;

    // Rooms.
    assert_error(
        &alice.try_create_room("", &[]).await,
        400,
        "invalid_request",
        "empty room name",
    );
    assert_error(
        &alice.try_create_room(&"n".repeat(101), &[]).await,
        400,
        "invalid_request",
        "101-character room name",
    );
    assert_error(
        &alice.try_create_room("ok", &["bad id"]).await,
        400,
        "invalid_request",
        "member with a space",
    );
    assert_error(
        &alice.try_create_room("ok", &[""]).await,
        400,
        "invalid_request",
        "empty member id",
    );
    assert_error(
        &alice
            .try_create_room("ok", &[&bob_id, &"u".repeat(65)])
            .await,
        400,
        "invalid_request",
        "65-character member id",
    );
    assert_error(
        &alice
            .call_raw(
                Method::POST,
                "/v1/rooms",
                br#"{"name": "x", "members": "bob"}"#.to_vec(),
                "application/json",
            )
            .await,
        400,
        "invalid_request",
        "members is not a list",
    );
    assert_error(
        &alice
            .call_raw(Method::POST, "/v1/rooms", b"{".to_vec(), "application/json")
            .await,
        400,
        "invalid_request",
        "bad JSON room",
    );
    let long = alice.create_room_id(&"é".repeat(100), &[]).await;
    let (status, list) = alice.rooms().await;
    assert_eq!(status, 200);
    let mut listed: Vec<&str> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut want = vec![room.as_str(), long.as_str()];
    want.sort_unstable();
    assert_eq!(listed, want, "refused room creations left rooms behind");
    let (status, bob_rooms) = bob.rooms().await;
    assert_eq!(status, 200);
    assert_eq!(
        bob_rooms["rooms"].as_array().unwrap().len(),
        1,
        "{bob_rooms}"
    );

    // Member ids.
    for bad in ["bad%20id", "a:b", &"u".repeat(65)] {
        assert_error(
            &alice.add_member(&room, bad).await,
            400,
            "invalid_request",
            &format!("PUT member {bad}"),
        );
        assert_error(
            &alice.remove_member(&room, bad).await,
            400,
            "invalid_request",
            &format!("DELETE member {bad}"),
        );
    }

    // History queries.
    for query in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "after=abc",
        "before=-1",
        "after=",
    ] {
        assert_error(
            &alice.history(&room, query).await,
            400,
            "invalid_request",
            &format!("history ?{query}"),
        );
    }
    let page = |v: (u16, Value)| {
        assert_eq!(v.0, 200, "{}", v.1);
        seqs(v.1["messages"].as_array().unwrap())
    };
    assert_eq!(page(alice.history(&room, "").await), vec![1, 2, 3]);
    assert_eq!(page(alice.history(&room, "after=1&limit=1").await), vec![2]);
    assert_eq!(
        page(alice.history(&room, "before=3&limit=1").await),
        vec![2]
    );
    assert_eq!(page(alice.history(&room, "before=3").await), vec![1, 2]);
    // Both bounds (an extension): strictly between them.
    assert_eq!(
        page(alice.history(&room, "after=1&before=3").await),
        vec![2]
    );
    assert_eq!(
        page(alice.history(&room, "after=3").await),
        Vec::<u64>::new()
    );
    assert_eq!(page(alice.history(&room, "limit=200").await), vec![1, 2, 3]);

    let history_before = alice.all_messages(&room).await;
    let members_before = ok_body(alice.members(&room).await, "members before");
    assert_eq!(
        member_ids(&members_before),
        BTreeSet::from([alice_id.clone(), bob_id.clone()]),
        "{members_before}"
    );

    // Not a member.
    assert_error(
        &mallory.get_room(&room).await,
        403,
        "forbidden",
        "non-member GET room",
    );
    assert_error(
        &mallory.members(&room).await,
        403,
        "forbidden",
        "non-member GET members",
    );
    assert_error(
        &mallory.history(&room, "").await,
        403,
        "forbidden",
        "non-member GET messages",
    );
    assert_error(
        &mallory.post_message(&room, "hi", None).await,
        403,
        "forbidden",
        "non-member POST message",
    );
    assert_error(
        &mallory.add_member(&room, &mallory_id).await,
        403,
        "forbidden",
        "non-member adds itself",
    );
    assert_error(
        &mallory.remove_member(&room, &bob_id).await,
        403,
        "forbidden",
        "non-member removes a member",
    );
    // A member that is not the creator removes another member.
    assert_error(
        &bob.remove_member(&room, &alice_id).await,
        403,
        "forbidden",
        "non-creator removes the creator",
    );

    // Unknown rooms.
    for unknown in ["r_00000000000000000000000000000000", "no-such-room"] {
        let what = |w: &str| format!("{w} of unknown room {unknown}");
        assert_error(
            &alice.get_room(unknown).await,
            404,
            "not_found",
            &what("GET"),
        );
        assert_error(
            &alice.members(unknown).await,
            404,
            "not_found",
            &what("GET members"),
        );
        assert_error(
            &alice.history(unknown, "").await,
            404,
            "not_found",
            &what("GET messages"),
        );
        assert_error(
            &alice.post_message(unknown, "hi", None).await,
            404,
            "not_found",
            &what("POST message"),
        );
        assert_error(
            &alice.add_member(unknown, &bob_id).await,
            404,
            "not_found",
            &what("PUT member"),
        );
        assert_error(
            &alice.remove_member(unknown, &bob_id).await,
            404,
            "not_found",
            &what("DELETE member"),
        );
    }

    // Nothing changed.
    assert_eq!(
        alice.all_messages(&room).await,
        history_before,
        "history changed after refused writes"
    );
    let members_after = ok_body(alice.members(&room).await, "members after");
    assert_eq!(
        members_after, members_before,
        "members changed after refused writes"
    );
    let (status, room_now) = alice.get_room(&room).await;
    assert_eq!(status, 200);
    assert_eq!(room_now["member_count"], 2, "{room_now}");

    // The API server is still up and well.
    let (status, _) = http_call(
        Method::GET,
        &format!("{}/healthz", cluster.api_url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // A member may remove itself.
    let (status, body) = bob.remove_member(&room, &bob_id).await;
    assert_eq!(status, 204, "{body}");
    assert_error(
        &bob.get_room(&room).await,
        403,
        "forbidden",
        "removed member GET room",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_msg_id_makes_sends_idempotent() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("idempotent", &[&bob_id]).await;

    let (s1, m1) = alice.post_message(&room, "once", Some("dup-1")).await;
    assert_eq!(s1, 201, "{m1}");
    let (s2, m2) = alice.post_message(&room, "once", Some("dup-1")).await;
    assert_eq!(s2, 201, "repeated POST: {m2}");
    assert_eq!(
        m2, m1,
        "a repeated client_msg_id must return the original message"
    );
    let (s3, m3) = alice
        .post_message(&room, "a different body", Some("dup-1"))
        .await;
    assert_eq!(s3, 201, "{m3}");
    assert_eq!(
        m3, m1,
        "a repeated client_msg_id with another body must return the original message"
    );
    assert_eq!(seqs(&alice.all_messages(&room).await), vec![1]);

    // The same client_msg_id from another sender is another message.
    let (s, mb) = bob.post_message(&room, "mine", Some("dup-1")).await;
    assert_eq!(s, 201, "{mb}");
    assert_eq!(mb["seq"], 2, "{mb}");
    assert_ne!(mb["id"], m1["id"]);

    // Over the WebSocket, a repeated client_msg_id is acked with the original.
    let mut ws = WsClient::connect(&alice).await;
    ws.send_message(&room, "once", Some("dup-1")).await;
    let ack = ws
        .next_of_type("ack", WAIT)
        .await
        .expect("no ack for a repeated send");
    assert_eq!(ack["client_msg_id"], "dup-1");
    assert_eq!(ack["seq"], m1["seq"], "{ack}");
    assert_eq!(ack["id"], m1["id"], "{ack}");
    for _ in 0..2 {
        ws.send_message(&room, "ws twice", Some("ws-dup")).await;
    }
    let a1 = ws.next_of_type("ack", WAIT).await.expect("first ack");
    let a2 = ws.next_of_type("ack", WAIT).await.expect("second ack");
    assert_eq!(a1["seq"], 3, "{a1}");
    assert_eq!(
        (&a2["seq"], &a2["id"]),
        (&a1["seq"], &a1["id"]),
        "{a1} vs {a2}"
    );

    let history = alice.all_messages(&room).await;
    assert_eq!(seqs(&history), vec![1, 2, 3], "{history:?}");
    assert_eq!(history[0]["body"], "once");
    assert_eq!(history[2]["client_msg_id"], "ws-dup");
}
