//! Property: any interleaving of appends (members and non-members, with and
//! without repeated client_msg_ids) leaves each room with gapless seqs, one
//! stored message per distinct (sender, client_msg_id), nothing from
//! non-members, and history equal to what the appends returned.
//!
//! Checked against `MemoryStore` and against `RedisStore`, whose append is
//! the Lua script production runs (the Redis run needs
//! `CHAT_TEST_REDIS_URLS`, see `tests/redis_store.rs`; it runs fewer cases,
//! each a few dozen round trips).

use std::collections::{BTreeMap, HashMap};

use chat_protocol::ids::new_id;
use chat_store::{MemoryStore, NewMessage, NewRoom, RedisStore, Store, StoreConfig, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

#[derive(Debug, Clone)]
struct Op {
    room: usize,
    sender: usize,
    cmid: Option<u8>,
}

fn op() -> impl Strategy<Value = Op> {
    (0usize..3, 0usize..4, proptest::option::of(0u8..5)).prop_map(|(room, sender, cmid)| Op {
        room,
        sender,
        cmid,
    })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..80)
}

/// Runs `ops` against `store` in three fresh rooms of three fresh members
/// (fresh ids, so cases can share one Redis Cluster) and checks the
/// property.
async fn appends_keep_the_property(store: &dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
    let case = new_id("p");
    let users: Vec<String> = ["u0", "u1", "u2", "outsider"]
        .iter()
        .map(|u| format!("{case}-{u}"))
        .collect();
    let room_id = |room: usize| format!("r_{case}{room}");
    for room in 0..3 {
        store
            .create_room(NewRoom {
                id: room_id(room),
                name: "p".into(),
                created_by: users[0].clone(),
                created_at: 0,
                members: users[..3].to_vec(),
            })
            .await
            .unwrap();
    }
    let mut stored: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut by_cmid: HashMap<(usize, usize, u8), u64> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let result = store
            .append(NewMessage {
                room: room_id(op.room),
                id: format!("m{i}"),
                from: users[op.sender].clone(),
                body: format!("b{i}"),
                ts: i as u64,
                client_msg_id: op.cmid.map(|c| format!("c{c}")),
                from_member: true,
            })
            .await;
        if op.sender == 3 {
            let refused = matches!(result, Err(StoreError::NotMember { .. }));
            prop_assert!(refused, "non-member append was not refused: {:?}", result);
            continue;
        }
        let appended = result.unwrap();
        let seq = appended.message.seq;
        match op.cmid.map(|c| (op.room, op.sender, c)) {
            Some(key) if by_cmid.contains_key(&key) => {
                prop_assert!(appended.duplicate);
                prop_assert_eq!(seq, by_cmid[&key]);
            }
            key => {
                prop_assert!(!appended.duplicate);
                if let Some(key) = key {
                    by_cmid.insert(key, seq);
                }
                stored.entry(op.room).or_default().push(seq);
            }
        }
    }
    for (room, seqs) in stored {
        prop_assert_eq!(&seqs, &(1..=seqs.len() as u64).collect::<Vec<_>>());
        let history = store.messages_after(&room_id(room), 0, 200).await.unwrap();
        prop_assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
        prop_assert!(history.iter().all(|m| m.from != users[3]));
    }
    Ok(())
}

proptest! {
    #[test]
    fn seqs_stay_gapless_and_dedup_holds(ops in ops()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(appends_keep_the_property(&MemoryStore::default(), &ops))?;
    }
}

/// The same property through the Redis append script, with the replica
/// acknowledgement production uses. One store (and runtime) for all cases.
#[test]
fn seqs_stay_gapless_and_dedup_holds_in_the_redis_append_script() {
    let Some(urls) = chat_store::conformance::test_redis_urls() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = StoreConfig {
        min_replica_acks: 1,
        replica_ack_timeout_ms: 5_000,
        ..StoreConfig::default()
    };
    let store = runtime
        .block_on(RedisStore::connect(&urls, config))
        .expect("connect to the Redis Cluster");
    let mut runner = TestRunner::new(ProptestConfig::with_cases(24));
    if let Err(failure) = runner.run(&ops(), |ops| {
        runtime.block_on(appends_keep_the_property(&store, &ops))
    }) {
        panic!("{failure}");
    }
}
