//! An append while its room's hash slot moves to another master (what
//! `redis-cli --cluster reshard` does: the slot is marked migrating, then
//! its keys move a few at a time). While the room's keys are split between
//! the two masters, Redis refuses the append script whole (TRYAGAIN: every
//! key it writes is declared), so nothing is half written: no seq without
//! its message. The cluster client retries it until the slot has moved;
//! then it lands on the new master with the next seq, once.
//!
//! Needs `CHAT_TEST_REDIS_URLS` (see `tests/redis_store.rs`). The test
//! moves one slot and moves it back; it is alone in this binary so no other
//! test meets the slot mid-move.

#[path = "support/redis.rs"]
mod support;

use std::time::Duration;

use chat_store::{keys, NewMessage, StoreConfig};
use redis::aio::MultiplexedConnection;

struct Master {
    id: String,
    port: u16,
    conn: MultiplexedConnection,
}

async fn masters(urls: &[String]) -> Vec<Master> {
    let mut out = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
        if !matches!(&role[0], redis::Value::BulkString(b) if b == b"master") {
            continue;
        }
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut conn)
            .await
            .unwrap();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        out.push(Master { id, port, conn });
    }
    out
}

async fn keys_in_slot(m: &mut Master, slot: u16) -> Vec<String> {
    redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query_async(&mut m.conn)
        .await
        .unwrap()
}

async fn migrate(from: &mut Master, to_port: u16, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to_port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(keys)
        .query_async(&mut from.conn)
        .await
        .unwrap();
}

async fn set_slot(m: &mut Master, slot: u16, state: &str, node: &str) {
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(node)
        .query_async(&mut m.conn)
        .await
        .unwrap();
}

/// Moves `slot` from `ms[from]` to `ms[to]`, moving first only the keys in
/// `first` and then calling `midway` while the slot's keys are split.
async fn move_slot(
    ms: &mut [Master],
    slot: u16,
    (from, to): (usize, usize),
    first: &[String],
    midway: impl std::future::Future<Output = ()>,
) {
    let (from_id, to_id, to_port) = (ms[from].id.clone(), ms[to].id.clone(), ms[to].port);
    set_slot(&mut ms[to], slot, "IMPORTING", &from_id).await;
    set_slot(&mut ms[from], slot, "MIGRATING", &to_id).await;
    migrate(&mut ms[from], to_port, first).await;
    midway.await;
    let rest = keys_in_slot(&mut ms[from], slot).await;
    migrate(&mut ms[from], to_port, &rest).await;
    // The new owner first, then the old one, then the rest, as
    // `redis-cli --cluster reshard` does.
    let mut order = vec![to, from];
    order.extend((0..ms.len()).filter(|i| *i != to && *i != from));
    for i in order {
        set_slot(&mut ms[i], slot, "NODE", &to_id).await;
    }
}

fn send(room: &str, body: &str, client_msg_id: &str) -> NewMessage {
    chat_store::conformance::msg(room, "alice", body, Some(client_msg_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_during_resharding_is_refused_whole_then_stored_once() {
    let Some(urls) = chat_store::conformance::test_redis_urls() else {
        return;
    };
    let Some(store) = support::make(StoreConfig::default()).await else {
        return;
    };
    let room = chat_store::conformance::room_with(&*store, "alice", &[]).await;
    let first = store.append(send(&room, "one", "c-1")).await.unwrap();
    assert_eq!(first.message.seq, 1);

    let mut ms = masters(&urls).await;
    assert!(ms.len() >= 2, "needs two masters");
    let meta = keys::room_meta(&room);
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&meta)
        .query_async(&mut ms[0].conn)
        .await
        .unwrap();
    let mut owner = None;
    for (i, m) in ms.iter_mut().enumerate() {
        if keys_in_slot(m, slot).await.contains(&meta) {
            owner = Some(i);
        }
    }
    let from = owner.expect("the room's master");
    let to = (from + 1) % ms.len();

    // The Stream moves first: the room's meta and seq stay behind. A script
    // that did not declare the Stream's key would bump the seq, then fail
    // on the Stream: a seq without a message. (No client_msg_id, so no
    // dedup lookup stops it earlier.)
    let (store2, room2) = (store.clone(), room.clone());
    let mut during = None;
    let midway = async {
        during = Some(tokio::spawn(async move {
            let mut two = send(&room2, "two", "unused");
            two.client_msg_id = None;
            store2.append(two).await
        }));
        // Long enough for the append to meet the split (it is refused, and
        // the cluster client retries it until the move ends or it gives up).
        tokio::time::sleep(Duration::from_millis(600)).await;
    };
    move_slot(&mut ms, slot, (from, to), &[keys::room_log(&room)], midway).await;
    let during = during.unwrap().await.unwrap();

    // Stored once with seq 2, or refused whole (the sender retries): either
    // way no seq was taken without its message.
    let stored: Vec<u64> = if during.is_ok() { vec![1, 2] } else { vec![1] };
    if let Ok(during) = &during {
        assert_eq!(during.message.seq, 2);
    }
    let history: Vec<u64> = store
        .messages_after(&room, 0, 50)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(history, stored);
    let next = store.append(send(&room, "three", "c-3")).await.unwrap();
    assert_eq!(next.message.seq, stored.len() as u64 + 1, "no gap");

    // Put the slot back where it was.
    move_slot(&mut ms, slot, (to, from), &[], async {}).await;
    let back = store.append(send(&room, "four", "c-4")).await.unwrap();
    assert_eq!(back.message.seq, next.message.seq + 1);
}
