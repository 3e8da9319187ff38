//! `chat tail` in cluster mode: every message, once and in order, across a
//! SIGTERM drain of its chat server and then a SIGKILL of the next one.
//!
//! Needs a Redis Cluster in `CHAT_TEST_REDIS_URLS` (skipped without one,
//! failing instead when `CHAT_TEST_REQUIRE_REDIS=1`; see the e2e crate) and
//! the workspace binaries (`cargo build --workspace --bins`).
//!
//! Which chat server tail is on: tail runs with `-v`, which prints the
//! `welcome`'s `server_id` on stderr ("connected to <id>") after every
//! (re)connection. That is the server that holds the session, by the
//! contract, so there is no guessing from connection counts. The test first
//! waits until `/v1/servers` lists exactly this test's three chat servers
//! (leftovers of earlier tests on the shared Redis expire within seconds),
//! so the API can only place tail on a server the test controls.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Home, Tail, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_keeps_every_message_in_order_across_a_drain_and_a_crash() {
    let Some(mut cluster) = e2e::Cluster::start(3, &["--drain-timeout-ms", "5000"]).await else {
        return;
    };
    cluster.wait_servers_exactly(&cluster.ids()).await;
    let alice = cluster.api(&e2e::unique("alice")).await;
    let bob = e2e::unique("bob");
    let room = alice.create_room_id("cli-faults", &[&bob]).await;

    let home = Home::new(&cluster.api_url);
    home.ok(&["login", &bob]).await;
    const TOTAL: u64 = 120;
    let total = TOTAL.to_string();
    let mut tail = Tail::start(&home, &["tail", &room, "-v", "--json", "--count", &total]);
    let first = tail.connected_to(WAIT).await;
    assert!(cluster.ids().contains(&first), "tail on {first}, not ours");
    println!("[cli] tail connected to {first}");

    // Alice posts over REST (the API server stays up) at a steady pace.
    let sender = tokio::spawn({
        let alice = alice.clone();
        let room = room.clone();
        async move {
            for n in 1..=TOTAL {
                let (status, body) = alice.post_message(&room, &format!("m{n}"), None).await;
                assert_eq!(status, 201, "post {n}: {body}");
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    });

    // Some messages in, drain tail's server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let i = cluster.chat_index(&first);
    cluster.chat[i].process.sigterm();
    let second = tail.connected_to(WAIT).await;
    assert_ne!(second, first, "tail reconnected elsewhere after the drain");
    assert!(
        cluster.ids().contains(&second),
        "tail on {second}, not ours"
    );
    println!("[cli] after SIGTERM of {first}: tail on {second}");

    // Then crash the server it moved to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let j = cluster.chat_index(&second);
    cluster.chat[j].process.sigkill().await;
    let third = tail.connected_to(WAIT).await;
    assert!(third != first && third != second, "tail on {third}");
    println!("[cli] after SIGKILL of {second}: tail on {third}");

    sender.await.unwrap();
    let lines = tail
        .stdout_lines(TOTAL as usize, Duration::from_secs(60))
        .await;
    let messages: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    for m in &messages {
        assert_eq!(m["body"], format!("m{}", m["seq"]));
    }
    // --count: tail stops by itself after the last one, successfully.
    let status = tokio::time::timeout(WAIT, tail.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let stored = alice.all_messages(&room).await;
    assert_eq!(stored.len() as u64, TOTAL);
}
