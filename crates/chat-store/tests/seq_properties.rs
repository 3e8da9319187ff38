//! Property: any interleaving of appends (members and non-members, with and
//! without repeated client_msg_ids) leaves each room with gapless seqs, one
//! stored message per distinct (sender, client_msg_id), nothing from
//! non-members, and history equal to what the appends returned.

use std::collections::{BTreeMap, HashMap};

use chat_store::{MemoryStore, NewMessage, NewRoom, Store, StoreError};
use proptest::prelude::*;

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

proptest! {
    #[test]
    fn seqs_stay_gapless_and_dedup_holds(ops in prop::collection::vec(op(), 1..80)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = MemoryStore::default();
            let users = ["u0", "u1", "u2", "outsider"];
            for room in 0..3 {
                store.create_room(NewRoom {
                    id: format!("r{room}"),
                    name: "p".into(),
                    created_by: "u0".into(),
                    created_at: 0,
                    members: vec!["u0".into(), "u1".into(), "u2".into()],
                }).await.unwrap();
            }
            let mut stored: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            let mut by_cmid: HashMap<(usize, usize, u8), u64> = HashMap::new();
            for (i, op) in ops.iter().enumerate() {
                let result = store.append(NewMessage {
                    room: format!("r{}", op.room),
                    id: format!("m{i}"),
                    from: users[op.sender].into(),
                    body: format!("b{i}"),
                    ts: i as u64,
                    client_msg_id: op.cmid.map(|c| format!("c{c}")),
                    from_member: true,
                }).await;
                if op.sender == 3 {
                    let refused = matches!(result, Err(StoreError::NotMember { .. }));
                    prop_assert!(refused, "non-member append was not refused");
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
                        if let Some(key) = key { by_cmid.insert(key, seq); }
                        stored.entry(op.room).or_default().push(seq);
                    }
                }
            }
            for (room, seqs) in stored {
                prop_assert_eq!(&seqs, &(1..=seqs.len() as u64).collect::<Vec<_>>());
                let history = store.messages_after(&format!("r{room}"), 0, 200).await.unwrap();
                prop_assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
                prop_assert!(history.iter().all(|m| m.from != "outsider"));
            }
            Ok(())
        })?;
    }
}
