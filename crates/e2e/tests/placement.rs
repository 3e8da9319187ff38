//! Placement and faults: even spread of `/v1/connect`, a crashed chat
//! server (SIGKILL), a drained one (SIGTERM) and an API server restart.
//!
//! These tests assert on the set of live chat servers, which every process
//! sharing the Redis Cluster sees, so they run one at a time (the `SERIAL`
//! lock) and each first waits until `/v1/servers` lists exactly its own
//! servers (a dead server of an earlier test stays listed for a few
//! seconds). Cargo runs test binaries one after another, so other files'
//! tests never overlap with these.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{
    member_ids, message_fields, ok_body, process_env, seqs, start_api_with, unique, Api, Cluster,
    WsClient, PLACEMENT_BY_LOAD, WAIT,
};
use serde_json::{json, Value};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_spread_evenly() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let ids = cluster.ids();
    cluster.wait_servers_exactly(&ids).await;
    let api = cluster.api(&unique("spread")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let (status, body) = api.connect().await;
        assert_eq!(status, 200, "/v1/connect: {body}");
        assert!(
            body["ticket"].is_string() && body["url"].is_string(),
            "{body}"
        );
        assert!(
            body["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{body}"
        );
        *counts
            .entry(body["server_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut servers: Vec<&String> = counts.keys().collect();
    servers.sort();
    let mut want: Vec<&String> = ids.iter().collect();
    want.sort();
    assert_eq!(
        servers, want,
        "connects went to other servers than this cluster's: {counts:?}"
    );
    for id in &ids {
        let n = counts[id];
        assert!(
            (40..=60).contains(&n),
            "{id} got {n} of 100 connects: {counts:?}"
        );
    }
}

/// A room's members go to the chat server where the room already has an
/// online member, though another has fewer connections; a user in no room
/// still goes to the least busy server. Through an API server with the
/// default placement (the suite's place by load alone, see
/// `PLACEMENT_BY_LOAD`), which has not placed the first member itself: the
/// store's presence index is what steers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_mates_are_placed_beside_each_other() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let ids = cluster.ids();
    cluster.wait_servers_exactly(&ids).await;
    let mut env = process_env(&cluster.redis_urls);
    env.retain(|(name, _)| !PLACEMENT_BY_LOAD.iter().any(|(by_load, _)| by_load == name));
    let (_default_api, default_api_url) = start_api_with(&env, &["--dev-tokens".into()]).await;
    let members: Vec<String> = (0..6).map(|i| unique(&format!("mate{i}"))).collect();
    let first = cluster.api(&members[0]).await;
    let others: Vec<&str> = members[1..].iter().map(String::as_str).collect();
    first.create_room_id("mates", &others).await;
    let ws = WsClient::connect(&first).await;
    let there = ws.server_id.clone();
    let elsewhere = ids.iter().find(|id| **id != there).unwrap().clone();
    for member in &members[1..] {
        let (status, body) = Api::login(&default_api_url, member).await.connect().await;
        assert_eq!(status, 200, "/v1/connect: {body}");
        assert_eq!(
            body["server_id"],
            there.as_str(),
            "{member} not beside the room"
        );
    }
    let loner = Api::login(&default_api_url, &unique("loner")).await;
    let (status, body) = loner.connect().await;
    assert_eq!(status, 200, "/v1/connect: {body}");
    assert_eq!(
        body["server_id"],
        elsewhere.as_str(),
        "the least busy server"
    );
    drop(ws);
}

/// Sends `room` messages from `ws` until `stop` is set (at least `min`,
/// at most `max`), each after the previous one's ack. Returns the acks.
async fn keep_sending(
    ws: &mut WsClient,
    room: &str,
    tag: &str,
    min: usize,
    max: usize,
    stop: &AtomicBool,
) -> Vec<Value> {
    let mut acks = Vec::new();
    let mut i = 0;
    while acks.len() < max && (acks.len() < min || !stop.load(Ordering::SeqCst)) {
        let cid = format!("{tag}-{i}");
        ws.send_message(room, &format!("{tag} message {i}"), Some(&cid))
            .await;
        let (_, reply) = ws
            .read_until(WAIT, |v| {
                (v["type"] == "ack" || v["type"] == "error") && v["client_msg_id"] == cid.as_str()
            })
            .await;
        let reply = reply.unwrap_or_else(|| panic!("no ack for {cid} ({:?})", ws.close_error));
        if reply["type"] == "ack" {
            acks.push(reply);
            i += 1;
        } else if reply["code"] == "rate_limited" {
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            panic!("send {cid} refused: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_server_is_no_longer_placed_and_clients_recover() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let ids = cluster.ids();
    cluster.wait_servers_exactly(&ids).await;
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("crash", &[&bob_id]).await;

    let mut a = WsClient::connect(&alice).await;
    let mut b = WsClient::connect_avoiding(&bob, &a.server_id).await;
    let dead = b.server_id.clone();
    let survivor = a.server_id.clone();
    assert_ne!(dead, survivor);

    // Some traffic before the crash.
    let never = AtomicBool::new(true);
    let mut acks = keep_sending(&mut a, &room, "before", 5, 5, &never).await;
    let mut bob_seen = b.collect_messages(&room, 5, WAIT).await;
    assert_eq!(seqs(&bob_seen), vec![1, 2, 3, 4, 5]);

    // Alice keeps sending while bob's server dies and the cluster notices.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let acks = keep_sending(&mut a, &room, "during", 5, 200, &stop).await;
            (a, acks)
        })
    };
    let idx = cluster.chat_index(&dead);
    // Its last health report was before this instant.
    let killed_at = Instant::now();
    cluster.chat[idx].process.sigkill().await;

    // Bob's connection drops; whatever arrived before is kept.
    let (frames, code) = b.wait_closed(WAIT).await;
    println!(
        "bob's connection ended: close code {code:?}, {:?}",
        b.close_error
    );
    bob_seen.extend(
        frames
            .into_iter()
            .filter(|v| v["type"] == "message" && v["room"] == room.as_str()),
    );

    // Within the dead-after interval (3 s, the default) of its last report
    // the dead server is gone from /v1/servers and from placement. (The
    // margin only covers the millisecond rounding of report times.)
    let dead_after = Duration::from_millis(3000);
    tokio::time::sleep_until((killed_at + dead_after + Duration::from_millis(20)).into()).await;
    let listed = bob.servers().await;
    assert!(
        !listed["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .any(|s| s["id"] == dead.as_str()),
        "{dead} still listed {:?} after it was killed: {listed}",
        killed_at.elapsed()
    );
    for _ in 0..6 {
        let (status, body) = bob.connect().await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(
            body["server_id"],
            dead.as_str(),
            "/v1/connect still places on the dead server"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let (mut a, during) = sender.await.expect("alice's sender task");
    acks.extend(during);

    // Bob reconnects (to the survivor) and resumes from the last seq seen.
    let mut b = WsClient::connect_avoiding(&bob, &dead).await;
    assert_eq!(b.server_id, survivor);
    let last_seen = bob_seen
        .last()
        .map(|m| m["seq"].as_u64().unwrap())
        .unwrap_or(0);
    b.send_json(json!({ "type": "resume", "rooms": { room.clone(): last_seen } }))
        .await;
    // Alice keeps going while the replay runs.
    let after = {
        let room = room.clone();
        tokio::spawn(async move {
            let never = AtomicBool::new(true);
            keep_sending(&mut a, &room, "after", 10, 10, &never).await
        })
    };
    let (frames, resumed) = b.read_until(WAIT, |v| v["type"] == "resumed").await;
    let resumed = resumed.unwrap_or_else(|| panic!("no resumed frame; frames: {frames:?}"));
    let resumed_at = resumed["rooms"][&room]
        .as_u64()
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!(
        resumed_at >= last_seen,
        "{resumed} vs last seen {last_seen}"
    );
    bob_seen.extend(
        frames
            .into_iter()
            .filter(|v| v["type"] == "message" && v["room"] == room.as_str()),
    );
    acks.extend(after.await.expect("alice's second sender task"));

    let n = acks.len() as u64;
    println!(
        "sigkill: {n} messages acked; bob saw up to seq {last_seen} before the crash; resumed at {resumed_at}"
    );
    let missing = (n as usize).saturating_sub(bob_seen.len());
    bob_seen.extend(b.collect_messages(&room, missing, WAIT).await);
    let expected: Vec<u64> = (1..=n).collect();

    let history = alice.all_messages(&room).await;
    assert_eq!(seqs(&history), expected, "history after the crash");
    for ack in &acks {
        let h = &history[ack["seq"].as_u64().unwrap() as usize - 1];
        assert_eq!(h["id"], ack["id"], "acked {ack} but history has {h}");
        assert_eq!(
            h["client_msg_id"], ack["client_msg_id"],
            "acked {ack} but history has {h}"
        );
    }
    assert_eq!(
        seqs(&bob_seen),
        expected,
        "bob must see every message exactly once, in order, across the crash and resume"
    );
    let bob_fields: Vec<Value> = bob_seen.iter().map(message_fields).collect();
    let history_fields: Vec<Value> = history.iter().map(message_fields).collect();
    assert!(
        bob_fields == history_fields,
        "bob's messages differ from history"
    );
    // A marker in the same room is delivered after anything still queued
    // for bob in it (one session, seq order), so no fixed wait is needed.
    let marker = alice.send(&room, "marker").await;
    let (before, found) = b
        .read_until(WAIT, |v| v["type"] == "message" && v["id"] == marker["id"])
        .await;
    assert!(found.is_some(), "the marker never arrived; got {before:?}");
    let extra: Vec<Value> = before
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(extra.is_empty(), "duplicates after catching up: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(2, &["--drain-timeout-ms", "5000"]).await else {
        return;
    };
    let ids = cluster.ids();
    cluster.wait_servers_exactly(&ids).await;
    let (draining, staying) = (ids[0].clone(), ids[1].clone());
    let user = unique("drainee");
    let api = cluster.api(&user).await;
    let other = cluster.api(&unique("stayer")).await;
    let mut ws = WsClient::connect_to(&api, &draining).await;
    let mut stayer = WsClient::connect_to(&other, &staying).await;

    let sigterm_at = Instant::now();
    cluster.chat[0].process.sigterm();

    // At once, the API server lists it as draining (as soon as its registry
    // refreshes, every 250 ms) and stops placing clients on it. Its client
    // is still connected meanwhile (this test does not read it, so the
    // server waits for the close handshake): "gone" would be too late.
    let seen_as = loop {
        let v = api.servers().await;
        match v["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .find(|s| s["id"] == draining.as_str())
        {
            Some(s) if s["state"] == "draining" => break "draining",
            Some(_) => {}
            None => panic!(
                "{draining} left /v1/servers {:?} after SIGTERM without being listed as draining",
                sigterm_at.elapsed()
            ),
        }
        assert!(
            sigterm_at.elapsed() < Duration::from_secs(2),
            "{draining} not listed as draining 2 s after SIGTERM: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen_after = sigterm_at.elapsed();
    println!("{seen_after:?} after SIGTERM /v1/servers showed {draining} as {seen_as}");
    for _ in 0..6 {
        let (status, body) = api.connect().await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(
            body["server_id"],
            draining.as_str(),
            "/v1/connect placed a client on a draining server"
        );
    }

    // The client is told to reconnect, then closed with 1012.
    let (frames, code) = ws.wait_closed(Duration::from_secs(30)).await;
    let reconnect_at = frames
        .iter()
        .position(|v| v["type"] == "reconnect")
        .unwrap_or_else(|| panic!("no reconnect frame before the close; frames: {frames:?}"));
    let reconnect = &frames[reconnect_at];
    assert!(reconnect["reason"].is_string(), "{reconnect}");
    assert!(reconnect["after_ms"].is_u64(), "{reconnect}");
    assert_eq!(
        code,
        Some(1012),
        "close code after draining ({:?}); frames: {frames:?}",
        ws.close_error
    );

    // The process exits cleanly.
    let status = cluster.chat[0]
        .process
        .wait_exit(Duration::from_secs(15))
        .await;
    let status =
        status.unwrap_or_else(|| panic!("chat-server {draining} still running 15 s after SIGTERM"));
    assert!(
        status.success(),
        "chat-server exited with {status} after SIGTERM"
    );

    // The drained client reconnects elsewhere; the other server is unaffected.
    let mut again = WsClient::connect(&api).await;
    assert_eq!(again.server_id, staying);
    again.ping(json!("moved")).await;
    stayer.ping(json!("unaffected")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restart_keeps_rooms_and_history() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(0, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = Api::login(&cluster.api_url, &alice_id).await;
    let bob = Api::login(&cluster.api_url, &bob_id).await;
    let room = alice.create_room_id("durable", &[&bob_id]).await;
    for k in 1..=3 {
        alice.send(&room, &format!("alice {k}")).await;
        bob.send(&room, &format!("bob {k}")).await;
    }
    let room_before = ok_body(alice.get_room(&room).await, "room before");
    assert_eq!(room_before["id"], room.as_str(), "{room_before}");
    let history_before = alice.all_messages(&room).await;
    let members_before = ok_body(alice.members(&room).await, "members before");
    assert_eq!(
        member_ids(&members_before),
        BTreeSet::from([alice_id.clone(), bob_id.clone()]),
        "{members_before}"
    );
    let rooms_before = ok_body(bob.rooms().await, "bob's rooms before");
    assert!(
        rooms_before["rooms"]
            .as_array()
            .is_some_and(|rooms| rooms.iter().any(|r| r["id"] == room.as_str())),
        "{rooms_before}"
    );
    assert_eq!(history_before.len(), 6);

    let old_url = cluster.api_url.clone();
    cluster.restart_api().await;
    assert_ne!(cluster.api_url, old_url);

    // The same tokens work against the new process.
    let alice = Api::with_token(&cluster.api_url, &alice_id, &alice.token);
    let bob = Api::with_token(&cluster.api_url, &bob_id, &bob.token);
    let (status, room_after) = alice.get_room(&room).await;
    assert_eq!(status, 200, "{room_after}");
    assert_eq!(room_after, room_before);
    assert_eq!(alice.all_messages(&room).await, history_before);
    let members_after = ok_body(alice.members(&room).await, "members after");
    assert_eq!(members_after, members_before);
    let rooms_after = ok_body(bob.rooms().await, "bob's rooms after");
    assert_eq!(rooms_after, rooms_before);

    // And the room goes on where it was.
    let next = bob.send(&room, "after the restart").await;
    assert_eq!(next["seq"], 7, "{next}");
}
