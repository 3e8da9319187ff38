//! The connection driver against a fake service (no sockets, tokio's paused
//! clock): reconnect, resume, ordering, dedup and retries, first in single
//! scenarios, then under seeded chaos.
//!
//! `CHAOS_SEEDS=200 cargo test -p chat-client --test fake_transport` runs
//! more seeds than the default 12.

mod fake_server;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chat_client::protocol::{ErrorCode, ServerFrame};
use chat_client::{
    Connection, ConnectionConfig, ConnectionState, Error, ErrorKind, Event, Message, Transport,
};
use fake_server::{FakeServer, Faults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn config(seed: u64) -> ConnectionConfig {
    ConnectionConfig {
        send_timeout: Duration::from_secs(3),
        gap_fill_delay: Duration::from_millis(500),
        ping_interval: Duration::from_secs(2),
        pong_timeout: Duration::from_secs(2),
        seed: Some(seed),
        ..ConnectionConfig::default()
    }
}

async fn open(server: &FakeServer, config: ConnectionConfig) -> Result<Connection, Error> {
    let transport: Arc<dyn Transport> = Arc::new(server.clone());
    Connection::open(transport, config).await
}

/// Events until `done` holds for the messages so far (or `limit` of
/// virtual time passes).
async fn collect_until(
    conn: &mut Connection,
    limit: Duration,
    done: impl Fn(&[Message]) -> bool,
) -> (Vec<Message>, Vec<Event>) {
    let mut messages = Vec::new();
    let mut others = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&messages) {
        match tokio::time::timeout_at(deadline, conn.next_event()).await {
            Ok(Some(Event::Message(m))) => messages.push(m),
            Ok(Some(e)) => others.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    (messages, others)
}

fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

#[tokio::test(start_paused = true)]
async fn messages_arrive_in_order_once_and_a_reconnect_resumes_from_the_last_one() {
    let server = FakeServer::new(1, &["r"]);
    let mut cfg = config(1);
    cfg.cursors = BTreeMap::from([("r".to_string(), 0)]);
    let mut conn = open(&server, cfg).await.unwrap();
    for i in 1..=3 {
        server.post("bob", "r", &format!("m{i}"));
    }
    let (got, _) = collect_until(&mut conn, Duration::from_secs(5), |m| m.len() >= 3).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    server.drop_all();
    // Posted while disconnected: only the resume can bring them.
    server.post("bob", "r", "m4");
    server.post("bob", "r", "m5");
    let (got, events) = collect_until(&mut conn, Duration::from_secs(60), |m| m.len() >= 2).await;
    assert_eq!(seqs(&got), [4, 5]);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::State(ConnectionState::Reconnecting))));
    assert!(server.lock().client_frames.iter().any(|f| matches!(
        f,
        chat_client::protocol::ClientFrame::Resume { rooms } if rooms.get("r") == Some(&3)
    )));
    assert_eq!(conn.positions().await.unwrap().get("r"), Some(&5));
}

#[tokio::test(start_paused = true)]
async fn an_early_message_waits_and_a_gap_that_stays_open_is_filled_from_history() {
    let server = FakeServer::new(2, &["r"]);
    let mut cfg = config(2);
    cfg.cursors = BTreeMap::from([("r".to_string(), 0)]);
    let mut conn = open(&server, cfg).await.unwrap();
    // Seq 1 and 2 are stored but their deliveries are lost; 3 arrives.
    server.set_faults(Faults {
        lose_delivery: 1.0,
        ..Faults::default()
    });
    server.post("bob", "r", "one");
    server.post("bob", "r", "two");
    server.set_faults(Faults::default());
    server.post("bob", "r", "three");
    let (got, _) = collect_until(&mut conn, Duration::from_secs(10), |m| m.len() >= 3).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(got[0].body, "one");
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_frame_delays_the_next_attempt_by_after_ms() {
    let server = FakeServer::new(3, &["r"]);
    let conn = open(&server, config(3)).await.unwrap();
    assert_eq!(server.lock().opens, 1);
    let started = tokio::time::Instant::now();
    server.push_frame(&ServerFrame::Reconnect {
        reason: "draining".into(),
        after_ms: 7_000,
    });
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    assert_eq!(server.lock().opens, 1, "not before after_ms");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(conn.state(), ConnectionState::Connected);
    assert!(started.elapsed() >= Duration::from_millis(7_000));
    assert_eq!(server.lock().opens, 2);
}

#[tokio::test(start_paused = true)]
async fn a_send_is_retried_with_one_client_msg_id_until_acknowledged() {
    let server = FakeServer::new(4, &["r"]);
    let conn = open(&server, config(4)).await.unwrap();
    // Every ack lost and the first attempts refused: the client must keep
    // the id across unavailable, rate_limited, the send timeout and the
    // reconnect it causes.
    server.set_faults(Faults {
        lose_ack: 1.0,
        ..Faults::default()
    });
    let sending = tokio::spawn({
        let conn = conn.handle();
        async move { conn.send("r", "hello").await }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    server.set_faults(Faults::default());
    let ack = sending.await.unwrap().unwrap();
    assert_eq!(ack.seq, 1);
    let s = server.lock();
    assert_eq!(s.rooms["r"].len(), 1, "stored once");
    assert!(s.send_frames[&ack.client_msg_id] >= 2, "retried");
    assert_eq!(
        s.send_frames.len(),
        1,
        "one client_msg_id for every attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn forbidden_sends_fail_and_rate_limited_ones_wait() {
    let server = FakeServer::new(5, &["r"]);
    let conn = open(&server, config(5)).await.unwrap();
    let err = conn.send("not-mine", "x").await.unwrap_err();
    assert!(matches!(
        err,
        Error::SendRefused {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    let err = conn.send("r", "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    server.set_faults(Faults {
        rate_limited: 1.0,
        ..Faults::default()
    });
    let sending = tokio::spawn({
        let conn = conn.handle();
        async move { conn.send("r", "later").await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.set_faults(Faults::default());
    assert_eq!(sending.await.unwrap().unwrap().seq, 1);
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_are_reported_and_skipped() {
    let server = FakeServer::new(6, &["r"]);
    let mut cfg = config(6);
    cfg.cursors = BTreeMap::from([("r".to_string(), 0)]);
    let mut conn = open(&server, cfg).await.unwrap();
    server.push_raw("{not json");
    server.push_raw(r#"{"type":"message","room":"r","seq":-1}"#);
    server.push_raw(r#"{"type":"teleport"}"#);
    server.post("bob", "r", "fine");
    let (got, events) = collect_until(&mut conn, Duration::from_secs(5), |m| !m.is_empty()).await;
    assert_eq!(seqs(&got), [1]);
    let problems = events
        .iter()
        .filter(|e| matches!(e, Event::ProtocolError(_)))
        .count();
    assert_eq!(problems, 3);
    assert_eq!(conn.state(), ConnectionState::Connected);
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_stops_connect_and_fail_fast_stops_on_any_first_error() {
    let server = FakeServer::new(7, &["r"]);
    server.lock().open_error = Some(Error::Api {
        method: "POST".into(),
        path: "/v1/connect".into(),
        status: 403,
        code: "forbidden".into(),
        message: "services cannot open sessions".into(),
    });
    let err = open(&server, config(7)).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Forbidden);

    let server = FakeServer::new(8, &["r"]);
    server.lock().open_error = Some(Error::Network {
        context: "POST /v1/connect".into(),
        detail: "connection refused".into(),
    });
    let mut cfg = config(8);
    cfg.fail_fast = true;
    let err = open(&server, cfg).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(server.lock().opens, 1);
}

#[tokio::test(start_paused = true)]
async fn close_fails_pending_sends_and_ends_the_events() {
    let server = FakeServer::new(9, &["r"]);
    let mut conn = open(&server, config(9)).await.unwrap();
    server.set_faults(Faults {
        lose_ack: 1.0,
        ..Faults::default()
    });
    let sending = tokio::spawn({
        let conn = conn.handle();
        async move { conn.send("r", "x").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close().await;
    assert!(matches!(sending.await.unwrap(), Err(Error::Closed)));
    while conn.next_event().await.is_some() {}
    assert_eq!(conn.state(), ConnectionState::Disconnected);
}

/// One seeded run: two rooms, our client sends while another member posts,
/// under every fault at once; then the faults stop, one last reconnect, and
/// the client must have seen every stored message once, in order, and every
/// send must be stored once.
async fn chaos_run(seed: u64) {
    let rooms = ["r1", "r2"];
    let server = FakeServer::new(seed, &rooms);
    let mut cfg = config(seed);
    cfg.cursors = rooms.iter().map(|r| (r.to_string(), 0)).collect();
    let mut conn = open(&server, cfg).await.unwrap();
    server.set_faults(Faults::chaos());

    let sends_per_room = 25;
    let mut senders = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let conn = conn.handle();
        let room = room.to_string();
        senders.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 31 + i as u64);
            let mut acks = Vec::new();
            for n in 0..sends_per_room {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
                acks.push(conn.send(&room, &format!("alice {room} {n}")).await);
            }
            acks
        }));
    }
    let poster = tokio::spawn({
        let server = server.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed * 17);
            for n in 0..40 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                let room = rooms[n % 2];
                server.post("bob", room, &format!("bob {room} {n}"));
            }
        }
    });

    // Take events while the load runs (so nothing is held back for long).
    let mut delivered: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    let mut problems = 0;
    let all_sent = async {
        let mut out = Vec::new();
        for s in senders {
            out.extend(s.await.unwrap());
        }
        poster.await.unwrap();
        out
    };
    tokio::pin!(all_sent);
    let acks = loop {
        tokio::select! {
            acks = &mut all_sent => break acks,
            Some(event) = conn.next_event() => match event {
                Event::Message(m) => delivered.entry(m.room.clone()).or_default().push(m),
                Event::ProtocolError(_) => problems += 1,
                Event::Stopped(e) => panic!("seed {seed}: stopped: {e}"),
                _ => {}
            },
        }
    };

    // Calm down, reconnect once more, and wait for everything stored.
    server.set_faults(Faults::default());
    server.drop_all();
    let stored: BTreeMap<String, Vec<Message>> = rooms
        .iter()
        .map(|r| (r.to_string(), server.messages(r)))
        .collect();
    let total: usize = stored.values().map(Vec::len).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while delivered.values().map(Vec::len).sum::<usize>() < total {
        match tokio::time::timeout_at(deadline, conn.next_event()).await {
            Ok(Some(Event::Message(m))) => delivered.entry(m.room.clone()).or_default().push(m),
            Ok(Some(Event::ProtocolError(_))) => problems += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }

    let s = server.lock();
    // Every send acknowledged, each stored exactly once.
    let mut ids = HashSet::new();
    for ack in &acks {
        let ack = ack
            .as_ref()
            .unwrap_or_else(|e| panic!("seed {seed}: a send failed: {e}"));
        assert!(
            ids.insert(ack.client_msg_id.clone()),
            "seed {seed}: one id per send"
        );
    }
    assert_eq!(acks.len(), rooms.len() * sends_per_room);
    for room in rooms {
        let mine: Vec<&Message> = s.rooms[room].iter().filter(|m| m.from == "alice").collect();
        assert_eq!(
            mine.len(),
            sends_per_room,
            "seed {seed}: {room}: each send stored once"
        );
        // Nothing lost, nothing doubled, order kept.
        let got = delivered.get(room).cloned().unwrap_or_default();
        assert_eq!(
            seqs(&got),
            (1..=s.rooms[room].len() as u64).collect::<Vec<_>>(),
            "seed {seed}: {room}: delivered seqs"
        );
        assert_eq!(
            got, s.rooms[room],
            "seed {seed}: {room}: delivered messages"
        );
    }
    // Frames queued on a connection the client abandoned are never read.
    assert!(
        problems <= s.malformed_sent && (s.malformed_sent == 0 || problems > 0),
        "seed {seed}: malformed frames reported: {problems} of {}",
        s.malformed_sent
    );
    println!(
        "seed {seed}: {} messages, {} opens, {} send frames for {} sends, {} malformed frames skipped",
        total,
        s.opens,
        s.send_frames.values().sum::<u32>(),
        acks.len(),
        problems
    );
}

#[tokio::test(start_paused = true)]
async fn chaos_nothing_lost_nothing_doubled_order_kept_each_send_stored_once() {
    let seeds: u64 = std::env::var("CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 1..=seeds {
        chaos_run(seed).await;
    }
}
