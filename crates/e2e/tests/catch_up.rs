//! No silent loss (issue 12): an open session whose deliveries were lost
//! catches up from history by itself, even in a room where nothing else is
//! said. Real processes, real sockets, the real Redis Cluster.

use std::collections::BTreeSet;

use chat_store::{NewMessage, RedisStore, Store, StoreConfig};
use e2e::chat_client::protocol::ids::new_id;
use e2e::serde_json::Value;
use std::time::Duration;

use e2e::{
    eventually, now_ms, redis_urls, scrape_metric, seqs, unique, Cluster, WsClient,
    GAP_FILLS_METRIC, WAIT,
};

/// Messages sent while the session's chat server is frozen.
const WHILE_FROZEN: usize = 1_100;

/// The scenario, made harder: Bob's chat server is frozen
/// (SIGSTOP) until the other processes count it dead, so every delivery to
/// it is dropped; Alice stores more than a thousand messages meanwhile,
/// then says nothing more. After SIGCONT, Bob's still-open session must get
/// every one of them, in order, once, with no later message to reveal the
/// gap (before the catch-up it got none; a gap over 1,000 was also cut
/// short). Then a live message still arrives normally, right after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_servers_sessions_get_what_was_sent_meanwhile_in_a_quiet_room() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    cluster.wait_servers_ready(&cluster.ids()).await;
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("freeze", &[&bob_id]).await;
    let frozen_id = cluster.ids()[0].clone();
    let mut bob_ws = WsClient::connect_to(&bob, &frozen_id).await;
    alice.send(&room, "before the freeze").await;
    let first = bob_ws.collect_messages(&room, 1, WAIT).await;
    assert_eq!(seqs(&first), vec![1], "the first message, live");

    let frozen = &cluster.chat[cluster.chat_index(&frozen_id)].process;
    frozen.freeze();
    // Until the API server stops listing it: from then on its routers drop
    // deliveries to it.
    eventually(WAIT * 2, "the frozen server to count as dead", || {
        let alice = &alice;
        let frozen_id = &frozen_id;
        async move {
            let servers = alice.servers().await;
            let listed = servers["servers"]
                .as_array()?
                .iter()
                .any(|s| s["id"] == frozen_id.as_str());
            (!listed).then_some(())
        }
    })
    .await;
    let stored = send_many(&alice, &room, WHILE_FROZEN).await;
    frozen.thaw();

    // Nothing more is said in the room: only the catch-up can bring these.
    let caught_up = bob_ws.collect_messages(&room, WHILE_FROZEN, WAIT * 3).await;
    let got = seqs(&caught_up);
    let want: Vec<u64> = (2..=(WHILE_FROZEN as u64 + 1)).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "Bob's open session received {} of the {} messages stored while its server was frozen \
         (first missing: {:?}); closed: {}",
        got.len(),
        want.len(),
        want.iter().find(|s| !got.contains(s)),
        bob_ws.is_closed()
    );
    assert_eq!(got, want, "in seq order, each once");
    assert_eq!(
        stored,
        want.iter().copied().collect::<BTreeSet<_>>(),
        "the acknowledged seqs"
    );

    // Live delivery goes on, with nothing doubled in between.
    let last = alice.send(&room, "after the thaw").await;
    let (before, after) = bob_ws
        .read_until(WAIT, |f| {
            f["type"] == "message" && f["room"] == room.as_str()
        })
        .await;
    let after = after.unwrap_or_else(|| panic!("no live message after the thaw: {before:?}"));
    assert_eq!(
        after["seq"], last["seq"],
        "the next message is the live one"
    );
    println!(
        "[catch-up] {WHILE_FROZEN} messages stored while the chat server was frozen reached the open session after SIGCONT, in order, once"
    );
}

/// A sender (an API server, a chat server) that dies after storing a
/// message and before routing it: the message is acknowledged-durable but
/// no delivery is ever sent. Simulated by appending straight to the real
/// Redis store, as the append path does, and routing nothing. The open
/// sessions of the room's members must still get it, in order, with
/// nothing more said in the room (before the catch-up, they never did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_by_a_sender_that_died_before_routing_is_delivered() {
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let redis = redis_urls().expect("the cluster started, so the URLs are set");
    let store = RedisStore::connect(
        &redis.split(',').map(str::to_owned).collect::<Vec<_>>(),
        StoreConfig::default(),
    )
    .await
    .expect("connecting to the Redis Cluster");
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("orphan", &[&bob_id]).await;
    let mut alice_ws = WsClient::connect(&alice).await;
    let mut bob_ws = WsClient::connect_avoiding(&bob, &alice_ws.server_id).await;
    let first = alice.send(&room, "routed").await;
    for ws in [&mut alice_ws, &mut bob_ws] {
        let got = ws.collect_messages(&room, 1, WAIT).await;
        assert_eq!(seqs(&got), vec![1], "{} got the routed message", ws.user);
    }

    let orphan = store
        .append(NewMessage {
            room: room.clone(),
            id: new_id("m_"),
            from: alice_id.clone(),
            body: "stored, never routed".into(),
            ts: now_ms(),
            client_msg_id: Some(unique("orphan")),
            from_member: true,
        })
        .await
        .expect("appending to the store")
        .message;
    assert_eq!(orphan.seq, first["seq"].as_u64().unwrap() + 1);

    // Both members' open sessions, on both chat servers, get it.
    for ws in [&mut alice_ws, &mut bob_ws] {
        let got = ws.collect_messages(&room, 1, WAIT).await;
        assert_eq!(
            seqs(&got),
            vec![orphan.seq],
            "{}'s session on {} did not get the message stored without routing",
            ws.user,
            ws.server_id
        );
        assert_eq!(got[0]["body"], "stored, never routed");
    }
    // And the room goes on: the next message is next, nothing doubled.
    let next = alice.send(&room, "routed again").await;
    for ws in [&mut alice_ws, &mut bob_ws] {
        let (before, after) = ws
            .read_until(WAIT, |f| {
                f["type"] == "message" && f["room"] == room.as_str()
            })
            .await;
        let after = after.unwrap_or_else(|| panic!("no next message: {before:?}"));
        assert_eq!(after["seq"], next["seq"], "{}: the next message", ws.user);
    }
}

/// Stores `n` messages with 8 REST senders; returns the acknowledged seqs.
async fn send_many(api: &e2e::Api, room: &str, n: usize) -> BTreeSet<u64> {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let api = api.clone();
        let room = room.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in (worker..n).step_by(8) {
                let message: Value = api.send(&room, &format!("frozen {i}")).await;
                seqs.push(message["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.expect("sender task"));
    }
    assert_eq!(all.len(), n, "every send acknowledged once");
    all
}

/// Link loss (issue 12): a chat server killed and restarted in place (same
/// id, same URLs, as a pod restarted by its kubelet) while an API server
/// holds a link to it. The API server's next delivery must go over a new
/// link, live: before links read while idle, it was written into the dead
/// socket, counted as sent, and only the catch-up brought it (a gap fill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_restarted_in_place_gets_deliveries_over_a_new_link() {
    let Some(mut cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("restart", &[&bob_id]).await;
    let target = cluster.ids()[0].clone();
    // The API server routes Alice's REST sends to Bob's chat server over a
    // link, opened by the first one.
    let mut bob_ws = WsClient::connect_to(&bob, &target).await;
    alice.send(&room, "over the first link").await;
    assert_eq!(seqs(&bob_ws.collect_messages(&room, 1, WAIT).await), [1]);

    let index = cluster.chat_index(&target);
    cluster.restart_chat_in_place(index).await;
    // Bob is back on the new process; nothing is missing for him yet.
    let mut bob_ws = WsClient::connect_to(&bob, &target).await;
    let server = cluster.chat[index].http_url();
    let fills_before = scrape_metric(&server, GAP_FILLS_METRIC)
        .await
        .unwrap_or(0.0);

    let sent = alice.send(&room, "after the restart").await;
    let got = bob_ws.collect_messages(&room, 1, WAIT).await;
    assert_eq!(seqs(&got), [sent["seq"].as_u64().unwrap()]);
    // Longer than a catch-up interval: had the delivery been lost on the
    // old link, the catch-up would have filled it by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fills = scrape_metric(&server, GAP_FILLS_METRIC)
        .await
        .unwrap_or(0.0);
    assert_eq!(
        fills, fills_before,
        "the message reached Bob through a gap fill (the catch-up), not live over a new link"
    );
}
