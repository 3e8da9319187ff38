//! Contract v1.1 end to end: read state and receipts, presence events and
//! service tokens, with real processes. Each scenario runs in cluster mode
//! (two chat servers on the Redis Cluster) and, where it needs no Redis, in
//! the local mode (`chat-local`, two chat servers on the in-memory store).

use std::time::{Duration, Instant};

use e2e::serde_json::{json, Value};
use e2e::{assert_error, unique, Api, Cluster, Process, WsClient, WAIT};

/// What a scenario needs of a running system: the API's URL and the ids of
/// two chat servers, so that users can be placed on different ones.
struct System {
    api_url: String,
    chat_ids: [String; 2],
}

impl System {
    fn of(cluster: &Cluster) -> System {
        let ids = cluster.ids();
        System {
            api_url: cluster.api_url.clone(),
            chat_ids: [ids[0].clone(), ids[1].clone()],
        }
    }

    async fn user(&self, prefix: &str) -> Api {
        let mut api = Api::login(&self.api_url, &unique(prefix)).await;
        api.allowed_servers = Some(self.chat_ids.to_vec());
        api
    }

    /// A service token from the development endpoint.
    async fn service(&self, name: &str) -> Api {
        let name = unique(name);
        let token = e2e::service_token(&self.api_url, &name).await;
        Api::with_token(&self.api_url, &name, &token)
    }
}

/// The local mode on free ports, with two chat servers.
async fn start_local() -> (Process, System) {
    let local = e2e::LocalSystem::start(&[]).await;
    let system = System {
        api_url: local.api_url.clone(),
        chat_ids: [local.chat_ids[0].clone(), local.chat_ids[1].clone()],
    };
    (local.process, system)
}

async fn put_read(api: &Api, room: &str, body: Value) -> (u16, Value) {
    api.call(
        reqwest::Method::PUT,
        &format!("/v1/rooms/{room}/read"),
        Some(&body),
    )
    .await
}

async fn reads(api: &Api, room: &str) -> (u16, Value) {
    api.call(
        reqwest::Method::GET,
        &format!("/v1/rooms/{room}/reads"),
        None,
    )
    .await
}

fn is_read(frame: &Value, room: &str, user: &str) -> bool {
    frame["type"] == "read" && frame["room"] == room && frame["user"] == user
}

fn is_presence(frame: &Value, user: &str) -> bool {
    frame["type"] == "presence" && frame["user"] == user
}

/// Reads until the message with `body` in `room`; returns what came before.
async fn until_message(ws: &mut WsClient, room: &str, body: &str) -> Vec<Value> {
    let (before, found) = ws
        .read_until(WAIT, |v| {
            v["type"] == "message" && v["room"] == room && v["body"] == body
        })
        .await;
    assert!(
        found.is_some(),
        "{} never got {body:?}; got {before:?}",
        ws.user
    );
    before
}

/// A read crosses chat servers: the reader's other device clears its badge
/// (device sync), the other member gets a receipt, and REST shows the
/// markers. Markers never move back.
async fn read_receipt_and_device_sync(system: &System) {
    let [s0, s1] = &system.chat_ids;
    let (alice, bob) = (system.user("alice").await, system.user("bob").await);
    let room = alice.create_room_id("reads", &[&bob.user]).await;
    let mut alice_phone = WsClient::connect_to(&alice, s0).await;
    let mut alice_laptop = WsClient::connect_to(&alice, s1).await;
    let mut bob_ws = WsClient::connect_to(&bob, s1).await;
    for i in 1..=3 {
        bob.send(&room, &format!("m{i}")).await;
    }
    until_message(&mut alice_phone, &room, "m3").await;

    alice_phone
        .send_json(json!({ "type": "read", "room": room, "seq": 2 }))
        .await;
    for ws in [&mut alice_laptop, &mut bob_ws, &mut alice_phone] {
        let (_, frame) = ws
            .read_until(WAIT, |v| is_read(v, &room, &alice.user))
            .await;
        let frame = frame.unwrap_or_else(|| panic!("{} got no read frame", ws.user));
        assert_eq!(frame["seq"], 2, "{frame}");
    }

    let (status, listed) = alice.rooms().await;
    assert_eq!(status, 200);
    let mine = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == room.as_str())
        .cloned()
        .expect("the room is listed");
    assert_eq!(
        (&mine["last_seq"], &mine["read_seq"], &mine["unread"]),
        (&json!(3), &json!(2), &json!(1)),
        "{mine}"
    );
    let (status, got) = reads(&alice, &room).await;
    assert_eq!(status, 200, "{got}");
    let mut expected = vec![
        json!({ "user": alice.user, "seq": 2 }),
        json!({ "user": bob.user, "seq": 3 }),
    ];
    expected.sort_by_key(|v| v["user"].as_str().unwrap().to_owned());
    assert_eq!(
        got["reads"],
        json!(expected),
        "bob's own sends moved his marker"
    );

    // Backwards is ignored (and announces nothing); above the latest clamps.
    let back = put_read(&alice, &room, json!({ "seq": 1 })).await;
    assert_eq!(back, (200, json!({ "room": room, "read_seq": 2 })));
    let up = put_read(&alice, &room, json!({ "seq": 99 })).await;
    assert_eq!(up, (200, json!({ "room": room, "read_seq": 3 })));
    let (_, next) = alice_laptop
        .read_until(WAIT, |v| is_read(v, &room, &alice.user))
        .await;
    assert_eq!(
        next.expect("the REST read reaches the laptop")["seq"],
        3,
        "the ignored read sent nothing, so the next read frame is the clamped one"
    );
}

/// Presence is per user, across servers: the first session brings a member
/// online, a second one changes nothing, the last one closing takes them
/// offline.
async fn presence_is_per_user(system: &System) {
    let [s0, s1] = &system.chat_ids;
    let (alice, bob) = (system.user("alice").await, system.user("bob").await);
    let room = bob.create_room_id("presence", &[&alice.user]).await;
    let mut bob_ws = WsClient::connect_to(&bob, s1).await;

    let first = WsClient::connect_to(&alice, s0).await;
    let (_, online) = bob_ws
        .read_until(WAIT, |v| is_presence(v, &alice.user))
        .await;
    let online = online.expect("alice's first session is announced");
    assert_eq!(
        (&online["room"], &online["online"]),
        (&json!(room), &json!(true)),
        "{online}"
    );
    assert!(online["ts"].as_u64().unwrap_or(0) > 0, "{online}");

    // A second session, then its close, then the first one's close: of all
    // the frames bob gets until a marker sent after everything, exactly two
    // are about alice, online then offline. (The events of one user travel
    // from several processes, so the marker at the end, seconds later, is
    // what bounds a late or doubled event, not the order of frames.)
    let mut seen = vec![online];
    let second = WsClient::connect_to(&alice, s1).await;
    second.close().await;
    bob.send(&room, "marker-1").await;
    seen.extend(until_message(&mut bob_ws, &room, "marker-1").await);
    first.close().await;
    let (before, offline) = bob_ws
        .read_until(WAIT, |v| is_presence(v, &alice.user))
        .await;
    seen.extend(before);
    seen.push(offline.expect("the last session closing"));
    bob.send(&room, "marker-2").await;
    seen.extend(until_message(&mut bob_ws, &room, "marker-2").await);
    let about_alice: Vec<&Value> = seen
        .iter()
        .filter(|v| is_presence(v, &alice.user))
        .collect();
    assert_eq!(
        about_alice
            .iter()
            .map(|v| v["online"].clone())
            .collect::<Vec<_>>(),
        vec![json!(true), json!(false)],
        "presence is per user, each change once: {about_alice:?}"
    );
}

/// A service creates a room for users, publishes as itself and as a member
/// to members on both chat servers, lists a user's rooms; it cannot open a
/// WebSocket, and a user cannot speak for others.
async fn service_publishes_to_members(system: &System) {
    let [s0, s1] = &system.chat_ids;
    let (alice, bob) = (system.user("alice").await, system.user("bob").await);
    let service = system.service("billing").await;
    let mut alice_ws = WsClient::connect_to(&alice, s0).await;
    let mut bob_ws = WsClient::connect_to(&bob, s1).await;

    let (status, room) = service
        .call(
            reqwest::Method::POST,
            "/v1/rooms",
            Some(&json!({ "name": "invoices", "members": [bob.user], "created_by": alice.user })),
        )
        .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["created_by"], alice.user.as_str());
    assert_eq!(
        room["member_count"], 2,
        "creator and member, not the service"
    );
    let room = room["id"].as_str().unwrap().to_owned();

    let publish = |body: Value| {
        let service = service.clone();
        let room = room.clone();
        async move {
            service
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/rooms/{room}/messages"),
                    Some(&body),
                )
                .await
        }
    };
    let (status, as_alice) = publish(json!({ "body": "from alice", "from": alice.user })).await;
    assert_eq!(
        (status, &as_alice["from"]),
        (201, &json!(alice.user)),
        "{as_alice}"
    );
    let (status, as_service) = publish(json!({ "body": "from the service" })).await;
    assert_eq!(
        (status, &as_service["from"]),
        (201, &json!(service.user)),
        "{as_service}"
    );
    for ws in [&mut alice_ws, &mut bob_ws] {
        let got = ws.collect_messages(&room, 2, WAIT).await;
        let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
        assert_eq!(bodies, ["from alice", "from the service"], "{}", ws.user);
    }
    let not_member = publish(json!({ "body": "x", "from": unique("stranger") })).await;
    assert_error(
        &not_member,
        403,
        "forbidden",
        "a service publishing as a non-member",
    );

    // The user's rooms, with that user's read state: alice "sent" seq 1.
    let (status, listed) = service
        .call(
            reqwest::Method::GET,
            &format!("/v1/users/{}/rooms", alice.user),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    let found = &listed["rooms"].as_array().unwrap()[0];
    assert_eq!(
        (
            &found["id"],
            &found["last_seq"],
            &found["read_seq"],
            &found["unread"]
        ),
        (&json!(room), &json!(2), &json!(1), &json!(1)),
        "{found}"
    );
    let (status, members) = service.members(&room).await;
    assert_eq!(
        status, 200,
        "a service reads members of any room: {members}"
    );
    assert_eq!(service.add_member(&room, &unique("carol")).await.0, 204);

    assert_error(
        &service.connect().await,
        403,
        "forbidden",
        "a service on /v1/connect",
    );
    let users_rooms = alice
        .call(
            reqwest::Method::GET,
            &format!("/v1/users/{}/rooms", bob.user),
            None,
        )
        .await;
    assert_error(
        &users_rooms,
        403,
        "forbidden",
        "a user listing another's rooms",
    );
    let spoofed = alice
        .call(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&json!({ "body": "x", "from": bob.user })),
        )
        .await;
    assert_error(&spoofed, 400, "invalid_request", "a user's spoofed from");
    let own = alice
        .call(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&json!({ "body": "mine", "from": alice.user })),
        )
        .await;
    assert_eq!(own.0, 201, "naming themself is fine: {}", own.1);
}

/// Bad input on every v1.1 field and endpoint gets the contract's error,
/// and changes nothing.
async fn v1_1_bad_input(system: &System) {
    let (alice, mallory) = (system.user("alice").await, system.user("mallory").await);
    let room = alice.create_room_id("bad", &[]).await;
    alice.send(&room, "one").await;
    for body in [
        json!({ "seq": -1 }),
        json!({ "seq": 1.5 }),
        json!({ "seq": "1" }),
        json!({ "seq": null }),
        json!({}),
        json!([]),
    ] {
        let got = put_read(&alice, &room, body.clone()).await;
        assert_error(&got, 400, "invalid_request", &format!("PUT read {body}"));
    }
    let no_body = alice
        .call(
            reqwest::Method::PUT,
            &format!("/v1/rooms/{room}/read"),
            None,
        )
        .await;
    assert_error(&no_body, 400, "invalid_request", "PUT read without a body");
    assert_error(
        &put_read(&mallory, &room, json!({ "seq": 1 })).await,
        403,
        "forbidden",
        "reading a room one is not in",
    );
    assert_error(
        &reads(&mallory, &room).await,
        403,
        "forbidden",
        "reads of a room one is not in",
    );
    assert_error(
        &put_read(&alice, "r_missing", json!({ "seq": 1 })).await,
        404,
        "not_found",
        "PUT read of no room",
    );
    let (_, marks) = reads(&alice, &room).await;
    assert_eq!(
        marks["reads"],
        json!([{ "user": alice.user, "seq": 1 }]),
        "nothing moved"
    );

    for created_by in [
        json!("not a user"),
        json!(""),
        json!(5),
        json!(unique("other")),
    ] {
        let got = alice
            .call(
                reqwest::Method::POST,
                "/v1/rooms",
                Some(&json!({ "name": "x", "created_by": created_by })),
            )
            .await;
        assert_error(
            &got,
            400,
            "invalid_request",
            &format!("created_by {created_by}"),
        );
    }

    let mut ws = WsClient::connect(&alice).await;
    for frame in [
        json!({ "type": "read", "room": room, "seq": -1 }),
        json!({ "type": "read", "room": room, "seq": 2.5 }),
        json!({ "type": "read", "room": room }),
    ] {
        ws.send_json(frame.clone()).await;
        let (_, error) = ws.read_until(WAIT, |v| v["type"] == "error").await;
        assert_eq!(
            error.expect("an error")["code"],
            "invalid_request",
            "{frame}"
        );
    }
    let strangers = mallory.create_room_id("other", &[]).await;
    ws.send_json(json!({ "type": "read", "room": strangers, "seq": 1 }))
        .await;
    let (before, error) = ws.read_until(WAIT, |v| v["type"] == "error").await;
    assert_eq!(error.expect("an error")["code"], "forbidden");
    assert!(!before.iter().any(|v| v["type"] == "read"), "{before:?}");
}

/// SIGKILL of a chat server: its users are reported offline to the others
/// by whichever process reaps it first, exactly once.
async fn killed_server_reports_its_users_offline(cluster: &mut Cluster) {
    let system = System::of(cluster);
    let [s0, s1] = &system.chat_ids;
    let (alice, bob) = (system.user("alice").await, system.user("bob").await);
    let room = bob.create_room_id("reaped", &[&alice.user]).await;
    let mut bob_ws = WsClient::connect_to(&bob, s1).await;
    let _alice_ws = WsClient::connect_to(&alice, s0).await;
    let (_, online) = bob_ws
        .read_until(WAIT, |v| is_presence(v, &alice.user))
        .await;
    assert_eq!(online.expect("online first")["online"], true);

    let killed_at = Instant::now();
    cluster.chat[0].process.sigkill().await;
    let (_, offline) = bob_ws
        .read_until(WAIT, |v| is_presence(v, &alice.user))
        .await;
    let offline = offline.expect("the dead server's user reported offline");
    assert_eq!(offline["online"], false, "{offline}");
    println!(
        "[e2e] offline reported {} ms after the SIGKILL (contract: within 5 s; dead after 3 s)",
        killed_at.elapsed().as_millis()
    );
    // Every process (the API server and the live chat server) reaps once a
    // second; after a few rounds, a marker proves none reported it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bob.send(&room, "marker").await;
    let before = until_message(&mut bob_ws, &room, "marker").await;
    assert!(
        !before.iter().any(|v| is_presence(v, &alice.user)),
        "reported twice: {before:?}"
    );
    let (_, members) = bob.members(&room).await;
    let alice_entry = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == alice.user.as_str())
        .cloned()
        .unwrap();
    assert_eq!(alice_entry["online"], false, "{members}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_mode_v1_1() {
    let Some(mut cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let system = System::of(&cluster);
    // `/v1/servers` reports each server's load figure too (0..=1).
    for server in cluster.servers().await {
        let load = server["load"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&load), "{server}");
    }
    read_receipt_and_device_sync(&system).await;
    presence_is_per_user(&system).await;
    service_publishes_to_members(&system).await;
    v1_1_bad_input(&system).await;
    killed_server_reports_its_users_offline(&mut cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_v1_1() {
    let (_local, system) = start_local().await;
    read_receipt_and_device_sync(&system).await;
    presence_is_per_user(&system).await;
    service_publishes_to_members(&system).await;
    v1_1_bad_input(&system).await;
}
