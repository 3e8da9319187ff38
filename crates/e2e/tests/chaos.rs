//! The chaos soak (issue 12): steady senders and followers in several rooms
//! across three chat servers, two API servers and Redis Cluster 3+3, under a
//! seeded random schedule of faults, one at a time: chat servers killed
//! (and restarted) or frozen, API servers killed (and restarted), Redis
//! masters killed (and restarted, to come back as replicas).
//!
//! Followers and WebSocket senders are the product's Rust client
//! (`chat-client`), so what is checked is what an application sees: every
//! acknowledged message of each of its rooms, once, in order. The report
//! gives sent, acked, expected and delivered, lost, duplicated, out of
//! order, reconnects, and the longest delay from a message's ack to its
//! delivery (the catch-up after a fault).
//!
//! Partitions cut one chat server off from Redis, or from the other chat
//! and API servers, by packet filtering on loopback (`e2e::partition`:
//! every server runs as a user id of its own); where that cannot be done
//! (not root, no iptables) the soak says so and runs without them.
//!
//! `CHAOS_SECONDS` (default 60) and `CHAOS_SEED` (default 1) set the run;
//! `scripts/chaos.sh` runs it longer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::protocol::rest::TokenScope;
use chat_client::{
    new_client_msg_id, ChatClient, ConnectionConfig, Event, RestClient, StaticToken,
};
use e2e::serde_json::json;
use e2e::{
    cluster_is_whole, eventually, start_api_as, start_api_on_as, start_chat_as, unique, Cluster,
    Partitions, Process, RedisNode,
};

const ROOMS: usize = 4;
const USERS: usize = 8;

/// Users sending over their own WebSocket connection, and over REST.
const WS_SENDERS: [usize; 2] = [0, 5];
const REST_SENDERS: [usize; 2] = [2, 6];
/// Sends per second per sender.
const SEND_RATE: f64 = 4.0;

/// Room `r` holds users 2r .. 2r+3 (mod 8): every user is in two rooms,
/// and every room has a WebSocket and a REST sender.
fn members(room: usize) -> Vec<usize> {
    (0..4).map(|k| (2 * room + k) % USERS).collect()
}

fn rooms_of(user: usize) -> Vec<usize> {
    (0..ROOMS).filter(|r| members(*r).contains(&user)).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small seeded generator: the fault schedule must be reproducible from
/// the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// Acknowledged messages: (room, seq) -> when the ack arrived.
#[derive(Default)]
struct Ledger {
    acked: Mutex<HashMap<(String, u64), Instant>>,
    attempts: AtomicU64,
    failed: AtomicU64,
}

impl Ledger {
    fn ack(&self, room: &str, seq: u64) {
        let fresh = self
            .acked
            .lock()
            .unwrap()
            .insert((room.to_owned(), seq), Instant::now())
            .is_none();
        assert!(
            fresh,
            "two sends acknowledged with the same seq {seq} in {room}"
        );
    }
}

/// What one follower's application received.
#[derive(Default)]
struct Received {
    /// room -> (seq, when), in arrival order.
    messages: HashMap<String, Vec<(u64, Instant)>>,
    duplicated: u64,
    out_of_order: u64,
    sessions: u64,
    stopped: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_loses_nothing() {
    let seconds = env_u64("CHAOS_SECONDS", 60);
    let seed = env_u64("CHAOS_SEED", 1).max(1);
    let partitions = Partitions::for_test("chaos");
    let cluster = if partitions.is_some() {
        Cluster::start_partitionable(3, &[]).await
    } else {
        Cluster::start(3, &[]).await
    };
    let Some(cluster) = cluster else {
        return;
    };
    let Some(nodes) = RedisNode::all(&cluster.redis_urls) else {
        return;
    };
    let api1_uid = cluster.api_uid();
    let (api1, api1_url) = start_api_as(&cluster.redis_urls, api1_uid).await;
    let api_urls = vec![cluster.api_url.clone(), api1_url.clone()];
    println!(
        "[chaos] seed {seed}, {seconds} s, 3 chat servers, 2 API servers ({api_urls:?}), Redis 3+3"
    );

    // Users, tokens, rooms.
    let run = unique("chaos");
    let users: Vec<String> = (0..USERS).map(|u| format!("{run}-u{u}")).collect();
    let anonymous = RestClient::anonymous(&api_urls[0], &Default::default()).unwrap();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push(
            anonymous
                .dev_token(user, TokenScope::User)
                .await
                .unwrap()
                .token,
        );
    }
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let creator = anonymous.with_tokens(StaticToken::new(&tokens[members(r)[0]]));
        let others: Vec<&str> = members(r)[1..].iter().map(|u| users[*u].as_str()).collect();
        rooms.push(
            creator
                .create_room_named(&format!("chaos-{r}"), &others)
                .await
                .unwrap()
                .id,
        );
    }

    let stop_senders = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::default());
    let client_of = |u: usize, api: &str| {
        ChatClient::builder(api, StaticToken::new(&tokens[u]))
            .connection(ConnectionConfig::default())
            .build()
            .unwrap()
    };

    // Followers: every user, one connection each, all its rooms from seq 0.
    let mut followers = Vec::new();
    for (u, _) in users.iter().enumerate() {
        let received = Arc::new(Mutex::new(Received::default()));
        let client = client_of(u, &api_urls[u % 2]);
        let mut conn = client.connect().await.unwrap();
        for r in rooms_of(u) {
            conn.track(&rooms[r], Some(0)).unwrap();
        }
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = conn.next_event().await {
                let mut log = log.lock().unwrap();
                match event {
                    Event::Message(m) => {
                        let list = log.messages.entry(m.room.clone()).or_default();
                        let last = list.last().map_or(0, |(seq, _)| *seq);
                        let (dup, ooo) = (m.seq <= last, m.seq != last + 1);
                        list.push((m.seq, Instant::now()));
                        if dup {
                            log.duplicated += 1;
                        } else if ooo {
                            log.out_of_order += 1;
                        }
                    }
                    Event::Session(_) => log.sessions += 1,
                    Event::Stopped(e) => {
                        log.stopped = Some(e.to_string());
                        return conn;
                    }
                    _ => {}
                }
            }
            conn
        });
        followers.push((u, received, task));
    }

    // Senders.
    let mut senders = Vec::new();
    for &u in &WS_SENDERS {
        let client = client_of(u, &api_urls[0]);
        let conn = client.connect().await.unwrap();
        let (stop, ledger) = (stop_senders.clone(), ledger.clone());
        let my_rooms: Vec<String> = rooms_of(u).iter().map(|r| rooms[*r].clone()).collect();
        senders.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Relaxed) {
                let room = &my_rooms[i % my_rooms.len()];
                ledger.attempts.fetch_add(1, Relaxed);
                match conn.send(room, &format!("ws {u} {i}")).await {
                    Ok(ack) => ledger.ack(&ack.room, ack.seq),
                    Err(e) => {
                        ledger.failed.fetch_add(1, Relaxed);
                        println!("[chaos] ws send {u}/{i} failed: {e}");
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_secs_f64(1.0 / SEND_RATE)).await;
            }
            conn.close().await;
        }));
    }
    for &u in &REST_SENDERS {
        let rest: Vec<RestClient> = api_urls
            .iter()
            .map(|url| RestClient::new(url, StaticToken::new(&tokens[u])).unwrap())
            .collect();
        let (stop, ledger) = (stop_senders.clone(), ledger.clone());
        let my_rooms: Vec<String> = rooms_of(u).iter().map(|r| rooms[*r].clone()).collect();
        senders.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Relaxed) {
                let room = &my_rooms[i % my_rooms.len()];
                let id = new_client_msg_id();
                ledger.attempts.fetch_add(1, Relaxed);
                // Retried with the same client_msg_id, on either API server,
                // until stored: a killed API server or a failover is a delay.
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut attempt = 0usize;
                loop {
                    let api = &rest[(i + attempt) % rest.len()];
                    match api
                        .publish(room, &format!("rest {u} {i}"), None, Some(id.clone()))
                        .await
                    {
                        Ok(m) => {
                            ledger.ack(&m.room, m.seq);
                            break;
                        }
                        Err(e) if e.is_retryable() && Instant::now() < deadline => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => {
                            ledger.failed.fetch_add(1, Relaxed);
                            println!("[chaos] rest send {u}/{i} failed: {e}");
                            break;
                        }
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_secs_f64(1.0 / SEND_RATE)).await;
            }
        }));
    }

    // Faults, one at a time, each healed before the next.
    let mut faults = Faults {
        cluster,
        api1: Some(api1),
        api1_url,
        api1_uid,
        nodes,
        partitions,
        rng: Rng(seed),
        log: Vec::new(),
        healed: Vec::new(),
    };
    let soak_started = Instant::now();
    let deadline = soak_started + Duration::from_secs(seconds);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while Instant::now() < deadline {
        faults.one(soak_started).await;
        tokio::time::sleep(faults.rng.millis(2000, 4000)).await;
    }
    stop_senders.store(true, Relaxed);
    for sender in senders {
        sender.await.expect("sender task");
    }

    // Every follower must end with every acknowledged message of its rooms.
    let acked: HashMap<(String, u64), Instant> = ledger.acked.lock().unwrap().clone();
    let expected_of = |u: usize| -> BTreeMap<String, Vec<u64>> {
        rooms_of(u)
            .iter()
            .map(|r| {
                let room = &rooms[*r];
                let mut seqs: Vec<u64> = acked
                    .keys()
                    .filter(|(id, _)| id == room)
                    .map(|(_, seq)| *seq)
                    .collect();
                seqs.sort_unstable();
                (room.clone(), seqs)
            })
            .collect()
    };
    let have_all = |u: usize, received: &Received| {
        expected_of(u).iter().all(|(room, seqs)| {
            let got = received
                .messages
                .get(room)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            seqs.iter().all(|s| got.iter().any(|(seq, _)| seq == s))
        })
    };
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if followers
                .iter()
                .all(|(u, received, _)| have_all(*u, &received.lock().unwrap()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .is_ok();

    // The report.
    let (mut expected, mut delivered, mut lost, mut duplicated, mut out_of_order) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut reconnects = 0u64;
    let mut longest = Duration::ZERO;
    // From the later of its ack and the end of the last fault healed
    // before it arrived: how long a session took to catch up once nothing
    // was broken any more.
    let mut longest_after_fault = Duration::ZERO;
    let mut longest_detail = String::new();
    let mut first_lost = Vec::new();
    let mut stopped = Vec::new();
    for (u, received, _) in &followers {
        let received = received.lock().unwrap();
        duplicated += received.duplicated;
        out_of_order += received.out_of_order;
        reconnects += received.sessions.saturating_sub(1);
        if let Some(e) = &received.stopped {
            stopped.push(format!("{}: {e}", users[*u]));
        }
        for (room, seqs) in expected_of(*u) {
            let got = received.messages.get(&room).cloned().unwrap_or_default();
            for seq in seqs {
                expected += 1;
                match got.iter().find(|(s, _)| *s == seq) {
                    Some((_, at)) => {
                        delivered += 1;
                        let acked_at = acked[&(room.clone(), seq)];
                        longest = longest.max(at.saturating_duration_since(acked_at));
                        let fault_end = faults.healed.iter().filter(|h| *h <= at).max();
                        let from = fault_end.map_or(acked_at, |h| acked_at.max(*h));
                        let catch_up = at.saturating_duration_since(from);
                        if catch_up > longest_after_fault {
                            longest_after_fault = catch_up;
                            let secs = |t: Instant| {
                                t.saturating_duration_since(soak_started).as_secs_f64()
                            };
                            longest_detail = format!(
                                "{} {room} seq {seq}: acked at {:.1} s, last fault healed at {}, delivered at {:.1} s",
                                users[*u],
                                secs(acked_at),
                                fault_end.map_or("-".to_string(), |h| format!("{:.1} s", secs(*h))),
                                secs(*at)
                            );
                        }
                    }
                    None => {
                        lost += 1;
                        if first_lost.len() < 10 {
                            first_lost.push(format!("{} {room} seq {seq}", users[*u]));
                        }
                    }
                }
            }
        }
    }
    let report = json!({
        "seed": seed,
        "seconds": seconds,
        "faults": faults.log.len(),
        "sent": ledger.attempts.load(Relaxed),
        "acked": acked.len(),
        "send_failures": ledger.failed.load(Relaxed),
        "expected_deliveries": expected,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "reconnects": reconnects,
        "longest_ack_to_delivery_ms": longest.as_millis() as u64,
        "longest_catch_up_after_fault_ms": longest_after_fault.as_millis() as u64,
        "longest_catch_up": longest_detail,
        "settled": settled,
    });
    println!("[chaos] faults:\n  {}", faults.log.join("\n  "));
    println!("[chaos] RESULT {report}");
    assert!(
        stopped.is_empty(),
        "connections stopped for good: {stopped:?}"
    );
    assert_eq!(
        (lost, duplicated, out_of_order),
        (0, 0, 0),
        "lost / duplicated / out of order (first lost: {first_lost:?}); report {report}"
    );
    assert!(!acked.is_empty(), "nothing was acknowledged: {report}");
    for (_, _, task) in followers {
        task.abort();
    }
}

/// The fault injector: owns the processes it kills and restarts.
struct Faults {
    cluster: Cluster,
    api1: Option<Process>,
    api1_url: String,
    api1_uid: Option<u32>,
    nodes: Vec<RedisNode>,
    partitions: Option<Partitions>,
    rng: Rng,
    log: Vec<String>,
    /// When each fault ended: the moment its process is restarted or
    /// thawed (taken just before, so that a delivery at that very instant
    /// counts from this fault, not from the one before).
    healed: Vec<Instant>,
}

impl Faults {
    /// Injects one fault and heals it: back to three ready chat servers, two
    /// API servers and a whole Redis Cluster before returning.
    async fn one(&mut self, t0: Instant) {
        let at = t0.elapsed().as_secs_f64();
        let kinds = if self.partitions.is_some() { 6 } else { 4 };
        match self.rng.below(kinds) {
            0 => {
                let i = self.rng.below(3) as usize;
                let id = self.cluster.chat[i].id.clone();
                let down = self.rng.millis(500, 3000);
                self.cluster.chat[i].process.sigkill().await;
                tokio::time::sleep(down).await;
                let args = self.cluster.chat[i].args.clone();
                self.healed.push(Instant::now());
                let uid = self.cluster.chat[i].uid;
                self.cluster.chat[i] =
                    start_chat_as(&self.cluster.redis_urls, &id, &args, uid).await;
                self.note(
                    at,
                    format!("chat server {id}: SIGKILL, restarted after {down:?}"),
                );
            }
            1 => {
                let i = self.rng.below(3) as usize;
                let id = self.cluster.chat[i].id.clone();
                let frozen = self.rng.millis(1000, 8000);
                self.cluster.chat[i].process.freeze();
                tokio::time::sleep(frozen).await;
                self.healed.push(Instant::now());
                self.cluster.chat[i].process.thaw();
                self.note(
                    at,
                    format!("chat server {id}: SIGSTOP for {frozen:?}, SIGCONT"),
                );
            }
            2 => {
                let second = self.rng.below(2) == 1;
                let down = self.rng.millis(300, 2000);
                let (port, name, uid) = if second {
                    let p = self.api1.take().expect("the second API server");
                    let port = p.port;
                    let mut p = p;
                    p.sigkill().await;
                    (port, self.api1_url.clone(), self.api1_uid)
                } else {
                    self.cluster.api.sigkill().await;
                    let api = &self.cluster;
                    (api.api.port, api.api_url.clone(), api.api_uid())
                };
                tokio::time::sleep(down).await;
                self.healed.push(Instant::now());
                let restarted = start_api_on_as(&self.cluster.redis_urls, port, uid)
                    .await
                    .unwrap_or_else(|log| panic!("restarting the API server on {port}: {log}"));
                if second {
                    self.api1 = Some(restarted);
                } else {
                    self.cluster.api = restarted;
                }
                self.note(
                    at,
                    format!("API server {name}: SIGKILL, restarted after {down:?}"),
                );
            }
            3 => {
                let masters: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| {
                        self.nodes[*i]
                            .cli(&["info", "replication"])
                            .lines()
                            .any(|l| l.trim() == "role:master")
                    })
                    .collect();
                let victim = masters[self.rng.below(masters.len() as u64) as usize];
                let down = self.rng.millis(3000, 6000);
                let port = self.nodes[victim].port;
                self.nodes[victim].signal("-KILL");
                tokio::time::sleep(down).await;
                self.healed.push(Instant::now());
                self.nodes[victim].restart();
                let nodes = self.nodes.clone();
                eventually(
                    Duration::from_secs(90),
                    "the Redis Cluster whole again",
                    || {
                        let nodes = nodes.clone();
                        async move {
                            tokio::task::spawn_blocking(move || cluster_is_whole(&nodes))
                                .await
                                .ok()?
                                .then_some(())
                        }
                    },
                )
                .await;
                self.note(
                    at,
                    format!("Redis master :{port}: SIGKILL, restarted after {down:?}"),
                );
            }
            kind => {
                let partitions = self.partitions.as_ref().expect("partitions");
                let i = self.rng.below(3) as usize;
                let server = &self.cluster.chat[i];
                let uid = server.uid.expect("a partitionable cluster");
                let cut = self.rng.millis(2000, 20000);
                let from = if kind == 4 {
                    let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
                    partitions.cut_from_redis(uid, &ports);
                    "Redis"
                } else {
                    let mut peers: Vec<u16> = self
                        .cluster
                        .chat
                        .iter()
                        .filter(|c| c.id != server.id)
                        .map(|c| c.port)
                        .collect();
                    peers.push(self.cluster.api.port);
                    peers.extend(self.api1.as_ref().map(|p| p.port));
                    partitions.cut_from_peers(uid, server.port, &peers);
                    "the other chat and API servers"
                };
                let id = server.id.clone();
                tokio::time::sleep(cut).await;
                self.healed.push(Instant::now());
                partitions.heal();
                self.note(
                    at,
                    format!("chat server {id}: cut off from {from} for {cut:?}"),
                );
            }
        }
        let ids = self.cluster.ids();
        self.cluster.wait_servers_ready(&ids).await;
    }

    fn note(&mut self, at: f64, what: String) {
        println!("[chaos] {at:>6.1} s  {what}");
        self.log.push(format!("{at:.1} s {what}"));
    }
}

#[test]
fn every_room_has_both_kinds_of_sender_and_every_user_two_rooms() {
    for r in 0..ROOMS {
        let m = members(r);
        assert!(m.iter().any(|u| WS_SENDERS.contains(u)), "room {r}: {m:?}");
        assert!(
            m.iter().any(|u| REST_SENDERS.contains(u)),
            "room {r}: {m:?}"
        );
    }
    for u in 0..USERS {
        assert_eq!(rooms_of(u).len(), 2);
    }
}
