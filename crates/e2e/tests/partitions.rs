//! No silent loss across network partitions (issue 12): one chat server cut
//! off from Redis, or from the other chat and API servers, for longer than
//! the dead-after interval. Its open sessions must have every message
//! acknowledged meanwhile, in order, once, soon after the partition ends,
//! or have been told to reconnect. Real processes and sockets; the
//! partition is packet filtering on loopback (`e2e::partition`), so these
//! tests need root and iptables and are skipped (with a notice) without.

use std::time::Duration;

use e2e::serde_json::Value;
use e2e::{
    bin_path, free_port, process_env, redis_urls, scrape_metric, seqs, unique, wait_http_ok, Api,
    Cluster, Partitions, Process, RedisNode, ServerUids, WsClient, GAP_FILLS_METRIC, WAIT,
};

/// How long a server is cut off from Redis: longer than the 3 s dead-after
/// interval, so the other processes count it dead and drop deliveries to
/// it.
const CUT_FROM_REDIS: Duration = Duration::from_secs(8);
/// How long a server is cut off from its peers: longer than the 15 s after
/// which a silent internal link is replaced plus the 5 s its reconnects
/// are tried before the queue is dropped (a shorter cut is absorbed by the
/// link: TCP retransmits, the queue waits).
const CUT_FROM_PEERS: Duration = Duration::from_secs(25);
/// Messages Alice stores while Bob's server is cut off.
const DURING: usize = 20;

enum Cut {
    FromRedis,
    FromPeers,
}

async fn partitioned_server_catches_up(cut: Cut) {
    let Some(partitions) = Partitions::for_test("partitions") else {
        return;
    };
    let Some(cluster) = Cluster::start_partitionable(2, &[]).await else {
        return;
    };
    let Some(nodes) = RedisNode::all(&cluster.redis_urls) else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let room = alice.create_room_id("partition", &[&bob_id]).await;
    let [cut_off, other] = [0, 1].map(|i| &cluster.chat[i]);
    // Alice sends over REST (through the API server, which routes to the
    // chat servers) and Bob listens on the server that will be cut off.
    let mut bob_ws = WsClient::connect_to(&bob, &cut_off.id).await;
    alice.send(&room, "before").await;
    assert_eq!(seqs(&bob_ws.collect_messages(&room, 1, WAIT).await), [1]);

    let uid = cut_off.uid.expect("a partitionable cluster");
    let how_long = match cut {
        Cut::FromRedis => {
            let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
            partitions.cut_from_redis(uid, &ports);
            CUT_FROM_REDIS
        }
        Cut::FromPeers => {
            partitions.cut_from_peers(uid, cut_off.port, &[other.port, cluster.api.port]);
            CUT_FROM_PEERS
        }
    };
    let mut acked = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..DURING {
        let m: Value = alice.send(&room, &format!("during {i}")).await;
        acked.push(m["seq"].as_u64().expect("seq"));
        tokio::time::sleep(how_long / DURING as u32).await;
    }
    tokio::time::sleep(how_long.saturating_sub(started.elapsed())).await;
    partitions.heal();
    println!("[partitions] healed after {:?}", started.elapsed());

    // Nothing more is said: the catch-up alone must bring them, or the
    // session must have been told to reconnect.
    let got = bob_ws.collect_messages(&room, DURING, WAIT * 2).await;
    if bob_ws.is_closed() && got.len() < DURING {
        println!("[partitions] Bob's session was closed: the client resumes elsewhere");
        return;
    }
    assert_eq!(
        seqs(&got),
        acked,
        "Bob's open session after the partition ended (closed: {})",
        bob_ws.is_closed()
    );
    let last = alice.send(&room, "after").await;
    let live = bob_ws.collect_messages(&room, 1, WAIT).await;
    assert_eq!(seqs(&live), [last["seq"].as_u64().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_cut_off_from_redis_catches_its_sessions_up() {
    partitioned_server_catches_up(Cut::FromRedis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_cut_off_from_its_peers_catches_its_sessions_up() {
    partitioned_server_catches_up(Cut::FromPeers).await;
}

/// Issue 12, "a room first seen after connect with out-of-order arrival":
/// Bob is added to a room while connected, and the room's first two
/// messages after that reach his server in the wrong order, the first one
/// well after the second (its link is cut for a while). The session used to
/// start the room at the second and drop the first as a duplicate when it
/// came; nothing else would ever bring it. It must start where Bob joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_first_seen_after_connect_gets_an_earlier_message_that_arrives_late() {
    let Some(partitions) = Partitions::for_test("partitions") else {
        return;
    };
    let Some(cluster) = Cluster::start_partitionable(2, &[]).await else {
        return;
    };
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    let [alice_server, bob_server] = [0, 1].map(|i| &cluster.chat[i]);
    let mut alice_ws = WsClient::connect_to(&alice, &alice_server.id).await;
    let mut bob_ws = WsClient::connect_to(&bob, &bob_server.id).await;

    // Alice's server has a working link to Bob's (a room they share).
    let shared = alice.create_room_id("shared", &[&bob_id]).await;
    alice_ws
        .send_message(&shared, "hello", Some("c-hello"))
        .await;
    alice_ws
        .next_of_type("ack", WAIT)
        .await
        .expect("ack of hello");
    assert_eq!(seqs(&bob_ws.collect_messages(&shared, 1, WAIT).await), [1]);

    // A room Bob is added to while connected, with history before he came.
    let room = alice.create_room_id("joined later", &[]).await;
    alice.send(&room, "before Bob").await;
    let (status, _) = alice.add_member(&room, &bob_id).await;
    assert_eq!(status, 204);

    // The first message after the join leaves Alice's server over a link
    // that is cut; the second reaches Bob's server directly from the API
    // server.
    let uid = alice_server.uid.expect("a partitionable cluster");
    partitions.cut_sends_to(uid, &[bob_server.port]);
    alice_ws
        .send_message(&room, "first after the join", Some("c-first"))
        .await;
    let ack = alice_ws.next_of_type("ack", WAIT).await.expect("ack");
    let second = alice.send(&room, "second after the join").await;
    let expected = vec![
        ack["seq"].as_u64().unwrap(),
        second["seq"].as_u64().unwrap(),
    ];
    assert_eq!(expected, [2, 3]);
    // Held past the first-seen hold (200 ms): the cut link retransmits the
    // first message only after the session has started the room.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    partitions.heal();

    let got = bob_ws.collect_messages(&room, 2, WAIT).await;
    assert_eq!(seqs(&got), expected, "Bob's session, first seeing the room");
    let more = bob_ws
        .frames_for(std::time::Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|f| f["type"] == "message" && f["room"] == room.as_str())
        .count();
    assert_eq!(
        more, 0,
        "the late copy of the first message is not written again"
    );
    let last = alice.send(&room, "after").await;
    let live = bob_ws.collect_messages(&room, 1, WAIT).await;
    assert_eq!(seqs(&live), [last["seq"].as_u64().unwrap()]);
}

/// Issue 15 ("Also"): on a fresh `helm install` the servers start before
/// Redis answers. They must stay up, report not ready, and become ready
/// by themselves once Redis answers (they used to exit at once, so the pod
/// crash-looped through Kubernetes' growing back-off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_started_before_redis_answers_stay_up_and_become_ready() {
    let Some(partitions) = Partitions::for_test("partitions") else {
        return;
    };
    let Some(redis_urls) = redis_urls() else {
        return;
    };
    let Some(nodes) = RedisNode::all(&redis_urls) else {
        return;
    };
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let uids = ServerUids::new();
    partitions.cut_from_redis(uids.api(), &ports);
    partitions.cut_from_redis(uids.chat(0), &ports);

    let env = process_env(&redis_urls);
    let (api_port, chat_port) = (free_port(), free_port());
    let chat_id = unique("early-chat");
    let mut api = Process::spawn_as(
        "api-server",
        &bin_path("api-server"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--dev-tokens".into(),
        ],
        &env,
        api_port,
        Some(uids.api()),
    );
    let mut chat = Process::spawn_as(
        "chat-server",
        &bin_path("chat-server"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{chat_port}"),
            "--server-id".into(),
            chat_id.clone(),
        ],
        &env,
        chat_port,
        Some(uids.chat(0)),
    );
    let http = reqwest::Client::new();
    let status = |port: u16, path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    // Longer than a Redis connect timeout (2 s) several times over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (name, process, port) in [("api", &mut api, api_port), ("chat", &mut chat, chat_port)] {
        assert_eq!(
            process.try_exit(),
            None,
            "the {name} server exited while Redis did not answer:\n{}",
            process.log_tail(20)
        );
        assert_eq!(status(port, "/healthz").await, Some(200), "{name} /healthz");
        assert_eq!(status(port, "/readyz").await, Some(503), "{name} /readyz");
    }

    partitions.heal();
    let api_url = format!("http://127.0.0.1:{api_port}");
    wait_http_ok(&mut api, &format!("{api_url}/readyz"), WAIT * 3)
        .await
        .expect("the API server ready once Redis answers");
    wait_http_ok(
        &mut chat,
        &format!("http://127.0.0.1:{chat_port}/readyz"),
        WAIT * 3,
    )
    .await
    .expect("the chat server ready once Redis answers");

    // And it serves: a session on the late chat server gets a message.
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = Api::login(&api_url, &alice_id).await;
    let mut bob = Api::login(&api_url, &bob_id).await;
    bob.allowed_servers = Some(vec![chat_id.clone()]);
    let room = alice.create_room_id("early", &[&bob_id]).await;
    let mut bob_ws = WsClient::connect_to(&bob, &chat_id).await;
    let sent = alice.send(&room, "hello").await;
    let got = bob_ws.collect_messages(&room, 1, WAIT).await;
    assert_eq!(seqs(&got), [sent["seq"].as_u64().unwrap()]);
}

/// Registry slot outage (issue 12): the API server cannot reach the one
/// Redis node that holds the registry slot, for longer than the dead-after
/// interval, while the room's own slot stays reachable and every chat
/// server keeps reporting. Its failed registry refreshes are not evidence
/// that servers died: it keeps routing from its last snapshot, so the
/// messages stored meanwhile arrive live. Before, a failed refresh aged
/// every server out by wall clock and the deliveries were dropped (only the
/// catch-up brought them, as gap fills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_does_not_stop_cross_server_delivery() {
    let Some(partitions) = Partitions::for_test("partitions") else {
        return;
    };
    let Some(cluster) = Cluster::start_partitionable(1, &[]).await else {
        return;
    };
    let Some(nodes) = RedisNode::all(&cluster.redis_urls) else {
        return;
    };
    let registry_port = nodes[0]
        .master_port_of(chat_store::keys::REGISTRY_SERVERS)
        .expect("the registry's master");
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = cluster.api(&alice_id).await;
    let bob = cluster.api(&bob_id).await;
    // A room whose slot another master holds.
    let mut room = String::new();
    for _ in 0..20 {
        let id = alice.create_room_id("registry-outage", &[&bob_id]).await;
        let port = nodes[0].master_port_of(&format!("chat:{{room:{id}}}:seq"));
        if port != Some(registry_port) {
            room = id;
            break;
        }
    }
    assert!(!room.is_empty(), "no room outside the registry's slot");
    let server = &cluster.chat[0];
    let mut bob_ws = WsClient::connect_to(&bob, &server.id).await;
    alice.send(&room, "before").await;
    assert_eq!(seqs(&bob_ws.collect_messages(&room, 1, WAIT).await), [1]);
    let fills_before = scrape_metric(&server.http_url(), GAP_FILLS_METRIC)
        .await
        .unwrap_or(0.0);

    let api_uid = cluster.api_uid().expect("a partitionable cluster");
    partitions.cut_from_redis(api_uid, &[registry_port]);
    let mut acked = Vec::new();
    let mut got = Vec::new();
    // Well past the 3 s dead-after interval; each message must arrive
    // before the next is sent (so within a catch-up interval, which would
    // count as a gap fill).
    for i in 0..8 {
        let m: Value = alice.send(&room, &format!("during {i}")).await;
        acked.push(m["seq"].as_u64().expect("seq"));
        got.extend(seqs(&bob_ws.collect_messages(&room, 1, WAIT).await));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    partitions.heal();
    assert_eq!(
        got, acked,
        "every message stored during the outage, in order"
    );
    let fills = scrape_metric(&server.http_url(), GAP_FILLS_METRIC)
        .await
        .unwrap_or(0.0);
    assert_eq!(
        fills, fills_before,
        "deliveries during the outage came by gap fills (the catch-up), not live"
    );
}
