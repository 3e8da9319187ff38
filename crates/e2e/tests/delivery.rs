//! Message delivery across a cluster of one api-server and two chat-servers
//! sharing the Redis Cluster: cross-server fan-out, REST sends, ack
//! ordering, per-room ordering under concurrency, resume, membership
//! changes, several sessions per user, typing and ping.
//!
//! Tests here run in parallel, each with its own cluster, users and rooms.
//! Clients only accept their own cluster's chat servers (see
//! `Api::allowed_servers`), so another test's servers going away never
//! touches them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use e2e::{
    eventually, message_fields, scrape_metric, seqs, unique, Cluster, WsClient, GAP_FILLS_METRIC,
    WAIT,
};
use serde_json::{json, Value};

fn is_message_of(v: &Value, room: &str) -> bool {
    v["type"] == "message" && v["room"] == room
}

fn messages_of(frames: &[Value], room: &str) -> Vec<Value> {
    frames
        .iter()
        .filter(|v| is_message_of(v, room))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_server_delivery() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("cross-server", &[&bob_id]).await;

    let mut a = WsClient::connect(&alice).await;
    let mut b = WsClient::connect_avoiding(&bob, &a.server_id).await;
    assert_ne!(
        a.server_id, b.server_id,
        "alice and bob must be on different chat servers"
    );

    a.send_message(&room, "hello from the other side", Some("cm-1"))
        .await;
    let frames = a
        .read_frames_until(WAIT, "ack and own message", |f| {
            f.iter().any(|v| v["type"] == "ack") && f.iter().any(|v| is_message_of(v, &room))
        })
        .await;
    let ack = frames.iter().find(|v| v["type"] == "ack").unwrap();
    assert_eq!(ack["client_msg_id"], "cm-1", "{ack}");
    assert_eq!(ack["room"], room.as_str(), "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert!(ack["id"].is_string(), "{ack}");
    let own = messages_of(&frames, &room);
    assert_eq!(own.len(), 1, "alice's frames: {frames:?}");
    let own = &own[0];
    assert_eq!(own["seq"], 1);
    assert_eq!(own["id"], ack["id"]);
    assert_eq!(own["from"], alice_id.as_str());
    assert_eq!(own["body"], "hello from the other side");
    assert_eq!(own["client_msg_id"], "cm-1");

    let got = b.collect_messages(&room, 1, WAIT).await;
    assert_eq!(got.len(), 1, "bob (on {}) got no message", b.server_id);
    assert_eq!(
        message_fields(&got[0]),
        message_fields(own),
        "bob's copy differs from alice's"
    );

    let history = bob.all_messages(&room).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(message_fields(&history[0]), message_fields(own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_send_is_delivered_over_websocket() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("rest-send", &[&bob_id]).await;
    let mut a = WsClient::connect(&alice).await;
    let mut b = WsClient::connect_avoiding(&bob, &a.server_id).await;

    let (status, msg) = alice
        .post_message(&room, "sent over REST", Some("rest-1"))
        .await;
    assert_eq!(status, 201, "{msg}");
    assert_eq!(msg["room"], room.as_str());
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["from"], alice_id.as_str());
    assert_eq!(msg["body"], "sent over REST");
    assert_eq!(msg["client_msg_id"], "rest-1");
    assert!(msg["id"].is_string() && msg["ts"].is_u64(), "{msg}");

    for (who, ws) in [("bob", &mut b), ("alice (the sender)", &mut a)] {
        let got = ws.collect_messages(&room, 1, WAIT).await;
        assert_eq!(got.len(), 1, "{who} got no message frame");
        assert_eq!(
            message_fields(&got[0]),
            message_fields(&msg),
            "{who}'s frame differs from the REST answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_comes_before_own_delivery() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let room = alice.create_room_id("ack-order", &[&bob_id]).await;
    let mut a = WsClient::connect(&alice).await;

    for k in 1..=5u64 {
        let cid = format!("ack-{k}");
        a.send_message(&room, &format!("message {k}"), Some(&cid))
            .await;
        let frames = a
            .read_frames_until(WAIT, &format!("ack {cid} and its message"), |f| {
                let Some(ack) = f
                    .iter()
                    .find(|v| v["type"] == "ack" && v["client_msg_id"] == cid.as_str())
                else {
                    return false;
                };
                f.iter()
                    .any(|v| is_message_of(v, &room) && v["seq"] == ack["seq"])
            })
            .await;
        let ack_at = frames
            .iter()
            .position(|v| v["type"] == "ack" && v["client_msg_id"] == cid.as_str())
            .unwrap();
        let ack = &frames[ack_at];
        assert_eq!(ack["seq"], k, "{ack}");
        let msg_at = frames
            .iter()
            .position(|v| is_message_of(v, &room) && v["seq"] == ack["seq"])
            .unwrap();
        assert!(
            ack_at < msg_at,
            "the message frame arrived before its ack: {frames:?}"
        );
        assert_eq!(frames[msg_at]["id"], ack["id"]);
    }
}

/// One sender: pipelines `n` sends, resends those refused with
/// `rate_limited` (they were not stored), and keeps reading until it has
/// seen `total` messages of the room. Returns (acks, message frames).
async fn run_sender(
    mut ws: WsClient,
    room: String,
    tag: String,
    n: usize,
    total: usize,
) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut acks: HashMap<String, Value> = HashMap::new();
    let mut messages = Vec::new();
    let mut to_send: Vec<usize> = (0..n).collect();
    while acks.len() < n {
        for i in to_send.drain(..) {
            ws.send_message(
                &room,
                &format!("{tag} body {i}"),
                Some(&format!("{tag}-{i}")),
            )
            .await;
        }
        let mut retry = Vec::new();
        while acks.len() + retry.len() < n {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let v = ws.next_frame(remaining).await.unwrap_or_else(|| {
                panic!(
                    "{tag}: connection ended or timed out with {} acks, {} refused, {} messages ({:?})",
                    acks.len(),
                    retry.len(),
                    messages.len(),
                    ws.close_error
                )
            });
            match v["type"].as_str() {
                Some("ack") => {
                    let cid = v["client_msg_id"].as_str().unwrap_or_default().to_owned();
                    assert!(
                        cid.starts_with(&format!("{tag}-")),
                        "{tag} got a foreign ack {v}"
                    );
                    assert!(
                        acks.insert(cid, v.clone()).is_none(),
                        "{tag}: second ack {v}"
                    );
                }
                Some("message") if v["room"] == room.as_str() => messages.push(v),
                Some("error") if v["code"] == "rate_limited" => {
                    let cid = v["client_msg_id"].as_str().unwrap_or_default();
                    let i: usize = cid
                        .strip_prefix(&format!("{tag}-"))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| {
                            panic!("{tag}: rate_limited without our client_msg_id: {v}")
                        });
                    retry.push(i);
                }
                Some("error") => panic!("{tag}: unexpected error frame {v}"),
                _ => {}
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            to_send = retry;
        }
    }
    let missing = total.saturating_sub(messages.len());
    let remaining = deadline.saturating_duration_since(Instant::now());
    messages.extend(ws.collect_messages(&room, missing, remaining).await);
    (acks.into_values().collect(), messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_room_ordering_with_concurrent_senders() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 50;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let ids = cluster.ids();
    let senders: Vec<String> = (0..SENDERS)
        .map(|i| unique(&format!("sender{i}")))
        .collect();
    let receivers: Vec<String> = (0..2).map(|i| unique(&format!("receiver{i}"))).collect();
    let owner = cluster.api(&senders[0]).await;
    let mut members: Vec<&str> = senders.iter().map(String::as_str).collect();
    members.extend(receivers.iter().map(String::as_str));
    let room = owner.create_room_id("ordering", &members).await;

    // Connect everyone first, alternating between the two servers.
    let mut sender_ws = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        let api = cluster.api(user).await;
        sender_ws.push(WsClient::connect_to(&api, &ids[i % 2]).await);
    }
    let mut receiver_ws = Vec::new();
    for (i, user) in receivers.iter().enumerate() {
        let api = cluster.api(user).await;
        receiver_ws.push(WsClient::connect_to(&api, &ids[i % 2]).await);
    }

    let receiver_tasks: Vec<_> = receiver_ws
        .into_iter()
        .map(|mut ws| {
            let room = room.clone();
            tokio::spawn(async move {
                let got = ws
                    .collect_messages(&room, TOTAL, Duration::from_secs(180))
                    .await;
                (ws.user.clone(), got)
            })
        })
        .collect();
    let sender_tasks: Vec<_> = sender_ws
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let room = room.clone();
            tokio::spawn(async move {
                let user = ws.user.clone();
                let (acks, got) = run_sender(ws, room, format!("s{i}"), PER_SENDER, TOTAL).await;
                (user, acks, got)
            })
        })
        .collect();

    let mut seen: Vec<(String, Vec<Value>)> = Vec::new();
    let mut all_acks: Vec<Value> = Vec::new();
    for task in sender_tasks {
        let (user, acks, got) = task.await.expect("sender task");
        assert_eq!(acks.len(), PER_SENDER, "{user}: acks");
        all_acks.extend(acks);
        seen.push((user, got));
    }
    for task in receiver_tasks {
        seen.push(task.await.expect("receiver task"));
    }

    let history = owner.all_messages(&room).await;
    let expected: Vec<u64> = (1..=TOTAL as u64).collect();
    assert_eq!(seqs(&history), expected, "history seqs");

    let mut ack_seqs: Vec<u64> = all_acks
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    ack_seqs.sort_unstable();
    assert_eq!(ack_seqs, expected, "acked seqs must be exactly 1..={TOTAL}");
    for ack in &all_acks {
        let h = &history[ack["seq"].as_u64().unwrap() as usize - 1];
        assert_eq!(h["id"], ack["id"], "ack {ack} vs history {h}");
        assert_eq!(
            h["client_msg_id"], ack["client_msg_id"],
            "ack {ack} vs history {h}"
        );
    }

    let history_fields: Vec<Value> = history.iter().map(message_fields).collect();
    for (user, got) in &seen {
        assert_eq!(seqs(got), expected, "{user} saw these seqs (in this order)");
        let fields: Vec<Value> = got.iter().map(message_fields).collect();
        assert!(
            fields == history_fields,
            "{user}'s messages differ from history"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_returns_exactly_the_missed_messages() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("resume", &[&bob_id]).await;

    let mut b = WsClient::connect(&bob).await;
    for k in 1..=3 {
        alice.send(&room, &format!("m{k}")).await;
    }
    let first = b.collect_messages(&room, 3, WAIT).await;
    assert_eq!(seqs(&first), vec![1, 2, 3]);
    b.close().await;

    for k in 4..=8 {
        alice.send(&room, &format!("m{k}")).await;
    }

    let mut b = WsClient::connect(&bob).await;
    b.send_json(json!({ "type": "resume", "rooms": { room.clone(): 3 } }))
        .await;
    let (before, resumed) = b.read_until(WAIT, |v| v["type"] == "resumed").await;
    let resumed = resumed.unwrap_or_else(|| panic!("no resumed frame; frames: {before:?}"));
    let replayed = messages_of(&before, &room);
    assert_eq!(
        seqs(&replayed),
        vec![4, 5, 6, 7, 8],
        "replay; all frames: {before:?}"
    );
    assert_eq!(resumed["rooms"][&room], 8, "{resumed}");
    let history = alice.all_messages(&room).await;
    let replayed_fields: Vec<Value> = replayed.iter().map(message_fields).collect();
    let history_fields: Vec<Value> = history[3..8].iter().map(message_fields).collect();
    assert_eq!(replayed_fields, history_fields);

    let m9 = alice.send(&room, "m9").await;
    let live = b.collect_messages(&room, 1, WAIT).await;
    assert_eq!(live.len(), 1, "bob did not get message 9");
    assert_eq!(message_fields(&live[0]), message_fields(&m9));
    // A marker in the same room arrives after anything still queued for
    // bob in it (seq order on one session): no fixed wait.
    let marker = alice.send(&room, "marker").await;
    let (before, found) = b
        .read_until(WAIT, |v| is_message_of(v, &room) && v["id"] == marker["id"])
        .await;
    assert!(found.is_some(), "the marker never arrived; got {before:?}");
    let extra = messages_of(&before, &room);
    assert!(extra.is_empty(), "duplicates after resume: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_apply_without_reconnecting() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id, carol_id) = (unique("alice"), unique("bob"), unique("carol"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let carol = cluster.api(&carol_id).await;
    let room = alice.create_room_id("membership", &[&bob_id]).await;

    let mut c = WsClient::connect(&carol).await;
    let mut b = WsClient::connect_avoiding(&bob, &c.server_id).await;

    let (status, body) = alice.add_member(&room, &carol_id).await;
    assert_eq!(status, 204, "PUT member: {body}");
    let m1 = alice.send(&room, "welcome carol").await;
    let got = c.collect_messages(&room, 1, WAIT).await;
    assert_eq!(got.len(), 1, "carol, added while connected, got nothing");
    assert_eq!(message_fields(&got[0]), message_fields(&m1));
    assert_eq!(b.collect_messages(&room, 1, WAIT).await.len(), 1);

    let carol_server = cluster.chat[cluster.chat_index(&c.server_id)].http_url();
    let fills_before = scrape_metric(&carol_server, GAP_FILLS_METRIC)
        .await
        .unwrap_or(0.0);
    let (status, body) = alice.remove_member(&room, &carol_id).await;
    assert_eq!(status, 204, "DELETE member: {body}");
    let m2 = alice.send(&room, "carol is gone").await;
    let got = b.collect_messages(&room, 1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "bob did not get the message after carol's removal"
    );
    assert_eq!(message_fields(&got[0]), message_fields(&m2));
    // The routers leave Carol out, but her session still follows the room:
    // her server's catch-up sees the room move past her and opens a gap,
    // whose fill must find her no longer a member (and forget the room)
    // rather than send her the message from history. Once that fill has
    // run, a pong marks the end of what she can have received.
    eventually(WAIT, "the catch-up to look at Carol's gap", || {
        let url = carol_server.clone();
        async move { (scrape_metric(&url, GAP_FILLS_METRIC).await? > fills_before).then_some(()) }
    })
    .await;
    let leaked = messages_of(&c.ping(json!("still-here")).await, &room);
    assert!(
        leaked.is_empty(),
        "carol still receives after removal: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sessions_of_one_user() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("sessions", &[&bob_id]).await;
    let mut b1 = WsClient::connect(&bob).await;
    let mut b2 = WsClient::connect(&bob).await;
    assert_ne!(b1.session, b2.session, "two sessions share a session id");

    let sent: Vec<Value> = {
        let mut v = Vec::new();
        for k in 1..=3 {
            v.push(alice.send(&room, &format!("to both {k}")).await);
        }
        v
    };
    let want: Vec<Value> = sent.iter().map(message_fields).collect();
    for (name, ws) in [("first", &mut b1), ("second", &mut b2)] {
        let got = ws.collect_messages(&room, 3, WAIT).await;
        let fields: Vec<Value> = got.iter().map(message_fields).collect();
        assert_eq!(fields, want, "bob's {name} session (on {})", ws.server_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_ping() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("typing", &[&bob_id]).await;
    let mut a = WsClient::connect(&alice).await;
    let mut b = WsClient::connect_avoiding(&bob, &a.server_id).await;

    a.send_json(json!({ "type": "typing", "room": room })).await;
    let typing = b
        .next_of_type("typing", WAIT)
        .await
        .expect("bob got no typing frame");
    assert_eq!(typing["room"], room.as_str(), "{typing}");
    assert_eq!(typing["user"], alice_id.as_str(), "{typing}");

    // No echo to alice. An echo would be queued when her server handles her
    // typing, before bob's server gets it; so bob's typing, sent after he
    // got hers, comes after any echo: it must be the first typing she sees.
    b.send_json(json!({ "type": "typing", "room": room })).await;
    let (before, marker) = a
        .read_until(WAIT, |v| {
            v["type"] == "typing" && v["user"] == bob_id.as_str()
        })
        .await;
    assert!(
        marker.is_some(),
        "alice got no typing frame from bob: {before:?}"
    );
    assert!(
        !before.iter().any(|v| v["type"] == "typing"),
        "typing was echoed to its sender: {before:?}"
    );

    // Ping answers carry the nonce back unchanged, whatever its shape.
    for nonce in [
        json!({ "x": 1 }),
        json!("abc"),
        json!(42),
        json!([1, { "y": null }]),
    ] {
        b.ping(nonce).await;
    }
    // Typing is never stored.
    assert!(alice.all_messages(&room).await.is_empty());
    let distinct: BTreeSet<&str> = [a.server_id.as_str(), b.server_id.as_str()].into();
    assert_eq!(distinct.len(), 2);
}
