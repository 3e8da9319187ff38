//! The behaviour every [`Store`] must have, as test scenarios that run
//! against both implementations (`tests/memory_store.rs` and
//! `tests/redis_store.rs` expand [`store_conformance_tests!`]).
//!
//! Each scenario makes its own rooms and users with fresh random ids, so the
//! scenarios can run in parallel against one shared Redis Cluster.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::ids::new_id;
use chat_protocol::now_ms;
use chat_protocol::rest::ServerState;

use crate::{
    NewMessage, NewRoom, OnlineSession, RoomServers, RoomsRead, ServerHealth, SessionLocation,
    Store, StoreError, WentOffline,
};

pub type SharedStore = Arc<dyn Store>;

/// The Redis Cluster node URLs for store tests, from `CHAT_TEST_REDIS_URLS`
/// (which `scripts/test.sh` sets after starting `scripts/redis-cluster.sh`).
/// `None` after a notice when unset, unless `CHAT_TEST_REQUIRE_REDIS=1`
/// (set by `scripts/test.sh` and CI) makes a missing cluster a failure.
pub fn test_redis_urls() -> Option<Vec<String>> {
    match std::env::var("CHAT_TEST_REDIS_URLS") {
        Ok(urls) if !urls.trim().is_empty() => {
            Some(urls.trim().split(',').map(str::to_owned).collect())
        }
        _ => {
            assert!(
                std::env::var("CHAT_TEST_REQUIRE_REDIS").as_deref() != Ok("1"),
                "CHAT_TEST_REQUIRE_REDIS=1 but CHAT_TEST_REDIS_URLS is unset: start scripts/redis-cluster.sh"
            );
            eprintln!("skipped: CHAT_TEST_REDIS_URLS is unset (run scripts/test.sh)");
            None
        }
    }
}

fn user(tag: &str) -> String {
    format!("{tag}-{}", &new_id("")[..12])
}

/// Creates a room of `creator` and `others` (for scenarios here and the
/// stores' own tests) and returns its id.
pub async fn room_with(store: &dyn Store, creator: &str, others: &[&str]) -> String {
    let id = new_id("r_");
    let mut members = vec![creator.to_owned()];
    members.extend(others.iter().map(|s| s.to_string()));
    store
        .create_room(NewRoom {
            id: id.clone(),
            name: "room".into(),
            created_by: creator.into(),
            created_at: now_ms(),
            members,
        })
        .await
        .unwrap();
    id
}

async fn room_ids_of_user(store: &SharedStore, user: &str) -> Vec<String> {
    let rooms = store.rooms_of_user(user).await.unwrap();
    rooms.into_iter().map(|r| r.id).collect()
}

/// A send from a member, as the servers make one (also for the Redis
/// store's own tests).
pub fn msg(room: &str, from: &str, body: &str, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        room: room.into(),
        id: new_id("m_"),
        from: from.into(),
        body: body.into(),
        ts: now_ms(),
        client_msg_id: cmid.map(str::to_owned),
        from_member: true,
    }
}

pub async fn created_room_reads_back_with_members_and_index(store: SharedStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let id = new_id("r_");
    let room = store
        .create_room(NewRoom {
            id: id.clone(),
            name: "général".into(),
            created_by: alice.clone(),
            created_at: 1234,
            members: vec![alice.clone(), bob.clone(), alice.clone()],
        })
        .await
        .unwrap();
    assert_eq!(room.member_count, 2);
    let read = store.room(&id).await.unwrap().unwrap();
    assert_eq!(read, room);
    assert_eq!(read.name, "général");
    assert_eq!(read.created_at, 1234);
    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(store.members(&id).await.unwrap(), expected);
    assert!(store.is_member(&id, &bob).await.unwrap());
    assert_eq!(store.rooms_of_user(&bob).await.unwrap(), vec![room]);
    assert_eq!(room_ids_of_user(&store, &alice).await, vec![id]);
    assert!(store.room(&new_id("r_")).await.unwrap().is_none());
}

pub async fn membership_changes_are_idempotent_and_need_a_room(store: SharedStore) {
    let (alice, carol) = (user("alice"), user("carol"));
    let id = room_with(&*store, &alice, &[]).await;
    assert!(store.add_member(&id, &carol).await.unwrap());
    assert!(!store.add_member(&id, &carol).await.unwrap());
    assert_eq!(store.room(&id).await.unwrap().unwrap().member_count, 2);
    assert_eq!(room_ids_of_user(&store, &carol).await, vec![id.clone()]);
    assert!(store.remove_member(&id, &carol).await.unwrap());
    assert!(!store.remove_member(&id, &carol).await.unwrap());
    assert!(!store.is_member(&id, &carol).await.unwrap());
    assert!(store.rooms_of_user(&carol).await.unwrap().is_empty());
    let missing = new_id("r_");
    assert!(matches!(
        store.add_member(&missing, &carol).await,
        Err(StoreError::NoRoom(_))
    ));
    assert!(matches!(
        store.remove_member(&missing, &carol).await,
        Err(StoreError::NoRoom(_))
    ));
}

/// Where a member's messages start: 0 for those a room was created with,
/// the room's seq at the time for those added later; again at a re-add.
pub async fn members_remember_the_seq_they_joined_at(store: SharedStore) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let id = room_with(&*store, &alice, &[&bob]).await;
    assert_eq!(store.joined_seq(&id, &alice).await.unwrap(), Some(0));
    assert_eq!(store.joined_seq(&id, &bob).await.unwrap(), Some(0));
    assert_eq!(store.joined_seq(&id, &carol).await.unwrap(), None);
    for i in 0..3 {
        store
            .append(msg(&id, &alice, &format!("m{i}"), None))
            .await
            .unwrap();
    }
    assert!(store.add_member(&id, &carol).await.unwrap());
    assert_eq!(store.joined_seq(&id, &carol).await.unwrap(), Some(3));
    store.append(msg(&id, &carol, "hi", None)).await.unwrap();
    // Adding again changes nothing: still a member since seq 3.
    assert!(!store.add_member(&id, &carol).await.unwrap());
    assert_eq!(store.joined_seq(&id, &carol).await.unwrap(), Some(3));
    assert!(store.remove_member(&id, &carol).await.unwrap());
    assert_eq!(store.joined_seq(&id, &carol).await.unwrap(), None);
    store
        .append(msg(&id, &alice, "while away", None))
        .await
        .unwrap();
    assert!(store.add_member(&id, &carol).await.unwrap());
    assert_eq!(store.joined_seq(&id, &carol).await.unwrap(), Some(5));
    assert_eq!(store.joined_seq(&id, &bob).await.unwrap(), Some(0));
    assert_eq!(store.joined_seq(&new_id("r_"), &bob).await.unwrap(), None);
}

pub async fn appends_get_gapless_seqs_per_room(store: SharedStore) {
    let alice = user("alice");
    let a = room_with(&*store, &alice, &[]).await;
    let b = room_with(&*store, &alice, &[]).await;
    for i in 1..=3u64 {
        let m = store
            .append(msg(&a, &alice, &format!("a{i}"), None))
            .await
            .unwrap();
        assert_eq!(m.message.seq, i);
        assert!(!m.duplicate);
        assert_eq!(m.message.body, format!("a{i}"));
        assert_eq!(m.message.client_msg_id, None);
    }
    let first_b = store.append(msg(&b, &alice, "b1", None)).await.unwrap();
    assert_eq!(first_b.message.seq, 1);
    let unknown = new_id("r_");
    let seqs = store.latest_seqs(&[&a, &b, &unknown, &a]).await.unwrap();
    assert_eq!(seqs, [3, 1, 0, 3], "in the order asked");
}

pub async fn non_members_and_missing_rooms_store_nothing(store: SharedStore) {
    let (alice, mallory) = (user("alice"), user("mallory"));
    let id = room_with(&*store, &alice, &[]).await;
    assert!(matches!(
        store.append(msg(&id, &mallory, "x", Some("c1"))).await,
        Err(StoreError::NotMember { .. })
    ));
    assert!(matches!(
        store.append(msg(&new_id("r_"), &alice, "x", None)).await,
        Err(StoreError::NoRoom(_))
    ));
    assert!(store.messages_after(&id, 0, 50).await.unwrap().is_empty());
    assert_eq!(store.latest_seqs(&[&id]).await.unwrap(), [0]);
    // A later member's message still gets seq 1: the refusal used no seq.
    let m = store.append(msg(&id, &alice, "ok", None)).await.unwrap();
    assert_eq!(m.message.seq, 1);
}

pub async fn repeated_client_msg_id_returns_the_original(store: SharedStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let id = room_with(&*store, &alice, &[&bob]).await;
    let first = store
        .append(msg(&id, &alice, "hello \"quoted\" \n", Some("c-1")))
        .await
        .unwrap();
    let again = store
        .append(msg(&id, &alice, "different", Some("c-1")))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    assert_eq!(first.message.body, "hello \"quoted\" \n");
    // Same client_msg_id from another sender is another message.
    let other = store
        .append(msg(&id, &bob, "hi", Some("c-1")))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.message.seq, 2);
    assert_eq!(store.messages_after(&id, 0, 50).await.unwrap().len(), 2);
}

pub async fn history_pages_after_and_before(store: SharedStore) {
    let alice = user("alice");
    let id = room_with(&*store, &alice, &[]).await;
    for i in 1..=10 {
        store
            .append(msg(&id, &alice, &format!("m{i}"), None))
            .await
            .unwrap();
    }
    let seqs = |v: Vec<chat_protocol::Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.messages_after(&id, 0, 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        seqs(store.messages_after(&id, 8, 50).await.unwrap()),
        vec![9, 10]
    );
    assert!(store.messages_after(&id, 10, 50).await.unwrap().is_empty());
    assert_eq!(
        seqs(store.messages_before(&id, 5, 3).await.unwrap()),
        vec![2, 3, 4]
    );
    assert_eq!(
        seqs(store.messages_before(&id, 3, 50).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        seqs(store.messages_before(&id, u64::MAX, 2).await.unwrap()),
        vec![9, 10]
    );
    assert!(store.messages_before(&id, 1, 50).await.unwrap().is_empty());
}

/// Needs a store made with `history_retention = 5`.
pub async fn history_is_trimmed_to_the_retention(store: SharedStore) {
    let alice = user("alice");
    let id = room_with(&*store, &alice, &[]).await;
    for i in 1..=8 {
        store
            .append(msg(&id, &alice, &format!("m{i}"), None))
            .await
            .unwrap();
    }
    let kept: Vec<u64> = store
        .messages_after(&id, 0, 50)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(kept, vec![4, 5, 6, 7, 8]);
}

/// A send retried after retention trimmed its original still gets the
/// original's id and seq (what an ack needs), and stores nothing new.
/// Needs a store made with `history_retention = 5`.
pub async fn a_retry_of_a_trimmed_message_gets_its_id_and_seq(store: SharedStore) {
    let alice = user("alice");
    let id = room_with(&*store, &alice, &[]).await;
    let original = store
        .append(msg(&id, &alice, "first", Some("c-old")))
        .await
        .unwrap()
        .message;
    for i in 2..=8 {
        store
            .append(msg(&id, &alice, &format!("m{i}"), None))
            .await
            .unwrap();
    }
    let retry = store
        .append(msg(&id, &alice, "first", Some("c-old")))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.message.id.as_str(), retry.message.seq),
        (original.id.as_str(), original.seq)
    );
    assert_eq!(retry.message.client_msg_id.as_deref(), Some("c-old"));
    let last = store.messages_before(&id, u64::MAX, 1).await.unwrap();
    assert_eq!(last[0].seq, 8, "the retry stored nothing");
}

/// A dedup record answers retries for at least the dedup TTL and is gone
/// some time after (the Redis store keeps records for one to two TTLs).
/// Needs a store made with `dedup_ttl_ms = 400`.
pub async fn a_retry_after_the_dedup_ttl_is_a_new_message(store: SharedStore) {
    let alice = user("alice");
    let id = room_with(&*store, &alice, &[]).await;
    let first = store
        .append(msg(&id, &alice, "once", Some("c-ttl")))
        .await
        .unwrap();
    let retry = store
        .append(msg(&id, &alice, "once", Some("c-ttl")))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, first.message.seq);
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let late = store
        .append(msg(&id, &alice, "once", Some("c-ttl")))
        .await
        .unwrap();
    assert!(!late.duplicate, "two TTLs later the record is gone");
    assert_eq!(late.message.seq, 2);
}

pub async fn concurrent_appends_stay_gapless(store: SharedStore) {
    let senders: Vec<String> = (0..5).map(|i| user(&format!("s{i}"))).collect();
    let others: Vec<&str> = senders[1..].iter().map(String::as_str).collect();
    let id = room_with(&*store, &senders[0], &others).await;
    let mut tasks = Vec::new();
    for s in senders.clone() {
        let store = store.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let m = store
                    .append(msg(&id, &s, &format!("{s}-{i}"), None))
                    .await
                    .unwrap();
                seqs.push(m.message.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs ascend"
        );
        all.extend(seqs);
    }
    all.sort();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    let history = store.messages_after(&id, 0, 200).await.unwrap();
    assert_eq!(history.len(), 100);
    let ids: HashSet<_> = history.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 100);
}

/// A ready server's health, as a chat server reports it (tests).
pub fn health(id: &str, connections: u64) -> ServerHealth {
    ServerHealth {
        id: id.into(),
        url: format!("ws://127.0.0.1:1/{id}"),
        internal_url: format!("http://127.0.0.1:1/{id}"),
        state: ServerState::Ready,
        connections,
        load: 0.0,
        last_seen_ms: now_ms(),
        tickets_in_own_slot: true,
        tracks_used_tickets: true,
    }
}

/// The TTL of records meant to expire during a scenario: long enough to
/// outlive a Redis round trip on a loaded machine, short enough to wait for.
const SHORT_TTL: Duration = Duration::from_millis(2000);

/// Polls `f` every 50 ms until it returns `Some`; panics with `what` if
/// that takes much longer than [`SHORT_TTL`]. For "expires": waits for the
/// expiry itself rather than a fixed time.
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + SHORT_TTL + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn registry_lists_live_servers_and_forgets_silent_ones(store: SharedStore) {
    let (a, b) = (new_id("srv-"), new_id("srv-"));
    store.put_server(&health(&a, 3), 60_000).await.unwrap();
    let b_reported = std::time::Instant::now();
    store
        .put_server(&health(&b, 1), SHORT_TTL.as_millis() as u64)
        .await
        .unwrap();
    let ids =
        |v: Vec<crate::ServerSnapshot>| v.into_iter().map(|s| s.health.id).collect::<HashSet<_>>();
    let listed = ids(store.servers(now_ms()).await.unwrap());
    assert!(listed.contains(&a) && listed.contains(&b));
    let mine = store
        .servers(now_ms())
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.health.id == a)
        .unwrap();
    assert_eq!(
        mine.health,
        health(&a, 3).clone_with_seen(mine.health.last_seen_ms)
    );
    // b stops reporting: gone once its TTL passes, and not before; a stays.
    let listed = wait_for("the silent server to expire", || {
        let store = store.clone();
        let b = b.clone();
        async move {
            let listed = ids(store.servers(now_ms()).await.unwrap());
            (!listed.contains(&b)).then_some(listed)
        }
    })
    .await;
    // (Expiry times have millisecond resolution: allow for the rounding.)
    assert!(
        b_reported.elapsed() + Duration::from_millis(10) >= SHORT_TTL,
        "forgotten {:?} after its report, before its TTL",
        b_reported.elapsed()
    );
    assert!(listed.contains(&a));
    store.remove_server(&a).await.unwrap();
    assert!(!ids(store.servers(now_ms()).await.unwrap()).contains(&a));
}

impl ServerHealth {
    fn clone_with_seen(&self, last_seen_ms: u64) -> ServerHealth {
        ServerHealth {
            last_seen_ms,
            ..self.clone()
        }
    }
}

/// For servers that take their tickets from their own slot and for those
/// from before (`tickets_in_own_slot` false: the API server writes to the
/// registry's slot, and the take finds them there).
pub async fn pending_tickets_count_until_taken_once(store: SharedStore) {
    for own_slot in [true, false] {
        pending_tickets_of_one_layout(&store, own_slot).await;
    }
}

async fn pending_tickets_of_one_layout(store: &SharedStore, own_slot: bool) {
    let srv = new_id("srv-");
    let server = ServerHealth {
        tickets_in_own_slot: own_slot,
        tracks_used_tickets: false,
        ..health(&srv, 0)
    };
    store.put_server(&server, 60_000).await.unwrap();
    let now = now_ms();
    store
        .add_pending_ticket(&server, "t1", now + 30_000)
        .await
        .unwrap();
    store
        .add_pending_ticket(&server, "t2", now + 30_000)
        .await
        .unwrap();
    store
        .add_pending_ticket(&server, "old", now + 100)
        .await
        .unwrap();
    let pending = |v: Vec<crate::ServerSnapshot>| {
        v.into_iter()
            .find(|s| s.health.id == srv)
            .unwrap()
            .pending_tickets
    };
    assert_eq!(pending(store.servers(now).await.unwrap()), 3);
    assert!(store
        .take_pending_ticket(&srv, "t1", now_ms())
        .await
        .unwrap());
    assert!(!store
        .take_pending_ticket(&srv, "t1", now_ms())
        .await
        .unwrap());
    assert!(!store
        .take_pending_ticket(&srv, "never", now_ms())
        .await
        .unwrap());
    assert!(!store
        .take_pending_ticket(&new_id("srv-"), "t2", now_ms())
        .await
        .unwrap());
    // Counted at a time after "old" expired: only t2 remains.
    assert_eq!(pending(store.servers(now + 1000).await.unwrap()), 1);
    assert!(!store
        .take_pending_ticket(&srv, "old", now + 1000)
        .await
        .unwrap());
    store.remove_server(&srv).await.unwrap();
}

pub async fn presence_tracks_sessions_until_removed_or_expired(store: SharedStore) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    // Every record gets the short TTL: only a refresh keeps one longer.
    let ttl = SHORT_TTL.as_millis() as u64;
    let first = store
        .add_session(&alice, &loc("s1", "A"), ttl)
        .await
        .unwrap();
    assert_eq!(first.sessions, vec![loc("s1", "A")]);
    assert!(first.came_online.is_some());
    // Each add answers with the user's sessions as they now are.
    let second = store
        .add_session(&alice, &loc("s2", "B"), ttl)
        .await
        .unwrap();
    let mut sessions = second.sessions;
    sessions.sort_by(|a, b| a.session.cmp(&b.session));
    assert_eq!(sessions, vec![loc("s1", "A"), loc("s2", "B")]);
    assert!(second.came_online.is_none());
    // More users than a store handles in one step (the Redis store's
    // `KEY_STEP`), written before bob like alice.
    let crowd: Vec<String> = (0..250).map(|i| user(&format!("crowd{i}"))).collect();
    for (i, member) in crowd.iter().enumerate() {
        let at = loc(&format!("c{i}"), "A");
        store.add_session(member, &at, ttl).await.unwrap();
    }
    store.add_session(&bob, &loc("s3", "A"), ttl).await.unwrap();
    let found = store
        .sessions_of(&[alice.clone(), bob.clone(), carol.clone()])
        .await
        .unwrap();
    let mut alice_sessions = found[&alice].clone();
    alice_sessions.sort_by(|a, b| a.session.cmp(&b.session));
    assert_eq!(alice_sessions, vec![loc("s1", "A"), loc("s2", "B")]);
    assert_eq!(found[&bob], vec![loc("s3", "A")]);
    assert!(!found.contains_key(&carol));

    store.remove_session(&alice, "s1").await.unwrap();
    // Refreshing keeps alice past her first TTL; bob, not refreshed, lapses.
    // Bob's record was written after alice's with the same TTL, so once it
    // is gone, alice's would be too without the refresh.
    let refreshed: Vec<String> = crowd.iter().chain([&alice]).cloned().collect();
    store.refresh_sessions(&refreshed, 60_000).await.unwrap();
    let found = wait_for("bob's unrefreshed presence to expire", || {
        let store = store.clone();
        let (alice, bob) = (alice.clone(), bob.clone());
        async move {
            let found = store.sessions_of(&[alice, bob.clone()]).await.unwrap();
            (!found.contains_key(&bob)).then_some(found)
        }
    })
    .await;
    assert_eq!(
        found.get(&alice),
        Some(&vec![loc("s2", "B")]),
        "the refreshed presence expired with its first TTL"
    );
    let crowd_found = store.sessions_of(&crowd).await.unwrap();
    assert_eq!(
        crowd_found.len(),
        crowd.len(),
        "every step was refreshed and read"
    );
    for (i, member) in crowd.iter().enumerate() {
        store
            .remove_session(member, &format!("c{i}"))
            .await
            .unwrap();
    }
    store.remove_session(&alice, "s2").await.unwrap();
    assert!(store
        .sessions_of(std::slice::from_ref(&alice))
        .await
        .unwrap()
        .is_empty());
}

fn online(user: &str, session: &str, server_id: &str) -> OnlineSession {
    OnlineSession {
        user: user.into(),
        session: session.into(),
        server_id: server_id.into(),
    }
}

async fn sorted_online(store: &SharedStore, room: &str) -> Vec<OnlineSession> {
    let mut entries = store.room_online(room).await.unwrap().to_vec();
    entries.sort();
    entries
}

/// The room presence index routing reads: members' live sessions only,
/// through connects, membership changes and disconnects, and returned by
/// the append that assigns the seq.
pub async fn presence_index_lists_members_sessions(store: SharedStore) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let room = room_with(&*store, &alice, &[&bob]).await;
    // Server ids with the separator characters of the index encoding.
    let (a, b) = ("12:srv-a", "srv:b");

    let announced = store
        .add_session(&alice, &loc("s1", a), 60_000)
        .await
        .unwrap();
    assert_eq!(announced.rooms, vec![(room.clone(), 0)]);
    let appended = store.append(msg(&room, &bob, "hi", None)).await.unwrap();
    assert_eq!(*appended.online, [online(&alice, "s1", a)]);

    // Not a member anywhere: announced nowhere, and not in the index.
    assert!(store
        .add_session(&carol, &loc("s2", b), 60_000)
        .await
        .unwrap()
        .rooms
        .is_empty());
    assert_eq!(
        sorted_online(&store, &room).await,
        vec![online(&alice, "s1", a)]
    );

    // Adding a connected member announces their session; the next append
    // returns it, and a reconnect reports the latest seq.
    store.add_member(&room, &carol).await.unwrap();
    let mut entries = store
        .append(msg(&room, &bob, "all", None))
        .await
        .unwrap()
        .online
        .to_vec();
    entries.sort();
    let mut expected = vec![online(&alice, "s1", a), online(&carol, "s2", b)];
    expected.sort();
    assert_eq!(entries, expected);
    assert_eq!(
        store
            .add_session(&carol, &loc("s3", a), 60_000)
            .await
            .unwrap()
            .rooms,
        vec![(room.clone(), 2)]
    );

    // Removal withdraws every session of the member at once.
    store.remove_member(&room, &carol).await.unwrap();
    assert_eq!(
        sorted_online(&store, &room).await,
        vec![online(&alice, "s1", a)]
    );
    assert!(store
        .append(msg(&room, &carol, "gone", None))
        .await
        .is_err());

    // A new room indexes its members' existing sessions.
    let second = room_with(&*store, &bob, &[&alice]).await;
    assert_eq!(
        sorted_online(&store, &second).await,
        vec![online(&alice, "s1", a)]
    );

    // Disconnecting withdraws the session from all its rooms; forgetting
    // drops entries by session id.
    store
        .add_session(&bob, &loc("s4", b), 60_000)
        .await
        .unwrap();
    store.remove_session(&alice, "s1").await.unwrap();
    assert_eq!(
        sorted_online(&store, &room).await,
        vec![online(&bob, "s4", b)]
    );
    assert_eq!(
        sorted_online(&store, &second).await,
        vec![online(&bob, "s4", b)]
    );
    store.forget_online(&second, &["s4".into()]).await.unwrap();
    assert!(sorted_online(&store, &second).await.is_empty());
    assert!(store.room_online("r_missing").await.unwrap().is_empty());
    store.remove_session(&bob, "s4").await.unwrap();
    store.remove_session(&carol, "s2").await.unwrap();
    store.remove_session(&carol, "s3").await.unwrap();
}

/// Placement's read: for each of a user's rooms, the servers its online
/// members are on, each once; rooms with more sessions than the bound are
/// left out, and no more rooms than asked are read.
pub async fn placement_reads_where_a_users_rooms_are_online(store: SharedStore) {
    let [alice, bob, carol, dave, erin] = ["alice", "bob", "carol", "dave", "erin"].map(user);
    let alone = room_with(&*store, &alice, &[]).await;
    let with_bob = room_with(&*store, &alice, &[&bob]).await;
    let with_carol = room_with(&*store, &alice, &[&carol]).await;
    let crowded = room_with(&*store, &alice, &[&dave, &erin]).await;
    // A server id with the separator characters of the index encoding.
    let (a, b) = ("12:srv-a", "srv:b");
    let sessions = [
        (&bob, "s1", a),
        (&carol, "s2", b),
        (&carol, "s3", b),
        (&dave, "s4", "srv-c"),
        (&erin, "s5", "srv-d"),
        (&erin, "s6", "srv-c"),
    ];
    for (who, session, server) in sessions {
        store
            .add_session(who, &loc(session, server), 60_000)
            .await
            .unwrap();
    }
    let read = |rooms, max_sessions, sessions| RoomsRead {
        rooms,
        max_sessions,
        sessions,
    };
    let mut read_all = store
        .room_servers_of_user(&alice, read(10, 2, 16))
        .await
        .unwrap();
    read_all.sort_by(|x, y| x.room.cmp(&y.room));
    let mut want = vec![
        RoomServers {
            room: alone,
            servers: vec![],
        },
        RoomServers {
            room: with_bob,
            servers: vec![a.to_owned()],
        },
        RoomServers {
            room: with_carol,
            servers: vec![b.to_owned()],
        },
    ];
    want.sort_by(|x, y| x.room.cmp(&y.room));
    assert_eq!(
        read_all, want,
        "{crowded} has 3 sessions, over the bound of 2"
    );

    let crowded_servers = |sessions| {
        let store = store.clone();
        let (alice, crowded) = (alice.clone(), crowded.clone());
        async move {
            let rooms = store.room_servers_of_user(&alice, read(10, 3, sessions));
            let mut rooms = rooms.await.unwrap();
            rooms.retain(|r| r.room == crowded);
            let mut servers = rooms.pop().expect("the crowded room, read").servers;
            servers.sort();
            servers
        }
    };
    assert_eq!(crowded_servers(3).await, ["srv-c", "srv-d"]);
    // A sample of one of its three sessions: one of their servers.
    let sampled = crowded_servers(1).await;
    assert!(sampled == ["srv-c"] || sampled == ["srv-d"], "{sampled:?}");

    let two = store.room_servers_of_user(&alice, read(2, 3, 16)).await;
    let two = two.unwrap();
    assert_eq!(two.len(), 2, "at most the rooms asked for: {two:?}");
    assert!(store
        .room_servers_of_user(&user("nobody"), read(10, 3, 16))
        .await
        .unwrap()
        .is_empty());
    for (who, session, _) in sessions {
        store.remove_session(who, session).await.unwrap();
    }
}

/// Every change to a room's presence index reaches the next append's
/// list of sessions and the next read of the index, whatever made it (a
/// store may keep the list between them, see `online_cache.rs`):
/// connects, joins, removals, disconnects, forgetting, reaping.
pub async fn appends_see_every_change_to_the_presence_index(store: SharedStore) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let room = room_with(&*store, &alice, &[&bob]).await;
    let (a, b) = (format!("srv-a-{}", &new_id("")[..8]), "srv-b".to_owned());
    let routed = || async {
        let mut entries = store
            .append(msg(&room, &alice, "x", None))
            .await
            .unwrap()
            .online
            .to_vec();
        entries.sort();
        assert_eq!(
            entries,
            sorted_online(&store, &room).await,
            "read as appended"
        );
        entries
    };
    let sorted = |mut v: Vec<OnlineSession>| {
        v.sort();
        v
    };

    assert!(routed().await.is_empty());
    store
        .add_session(&bob, &loc("s1", &a), 60_000)
        .await
        .unwrap();
    assert_eq!(routed().await, vec![online(&bob, "s1", &a)]);
    assert_eq!(routed().await, vec![online(&bob, "s1", &a)], "unchanged");
    store
        .add_session(&carol, &loc("s2", &b), 60_000)
        .await
        .unwrap();
    store.add_member(&room, &carol).await.unwrap();
    assert_eq!(
        routed().await,
        sorted(vec![online(&bob, "s1", &a), online(&carol, "s2", &b)])
    );
    store.remove_member(&room, &carol).await.unwrap();
    assert_eq!(routed().await, vec![online(&bob, "s1", &a)]);
    store.forget_online(&room, &["s1".into()]).await.unwrap();
    assert!(routed().await.is_empty());
    store
        .add_session(&bob, &loc("s3", &b), 60_000)
        .await
        .unwrap();
    store
        .add_session(&alice, &loc("s4", &a), 60_000)
        .await
        .unwrap();
    assert_eq!(
        routed().await,
        sorted(vec![online(&bob, "s3", &b), online(&alice, "s4", &a)])
    );
    store.reap_server(&a, 10).await.unwrap();
    assert_eq!(routed().await, vec![online(&bob, "s3", &b)]);
    store.remove_session(&bob, "s3").await.unwrap();
    assert!(routed().await.is_empty());
    for (who, session) in [(&bob, "s1"), (&carol, "s2"), (&alice, "s4")] {
        store.remove_session(who, session).await.unwrap();
    }
}

/// Read markers (contract v1.1): forward only, clamped to the latest seq,
/// moved by the member's own sends, reported in every room view, dropped
/// with the membership.
pub async fn read_markers_move_forward_only(store: SharedStore) {
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let room = room_with(&*store, &alice, &[&bob]).await;
    let view = |who: String| {
        let store = store.clone();
        let room = room.clone();
        async move { store.room_view(&room, &who).await.unwrap().unwrap() }
    };
    let fresh = view(bob.clone()).await;
    assert_eq!(
        (fresh.room.last_seq, fresh.room.read_seq, fresh.room.unread),
        (0, 0, 0)
    );
    for i in 0..3 {
        store
            .append(msg(&room, &alice, &format!("m{i}"), None))
            .await
            .unwrap();
    }
    // Sending moved alice's marker; bob has read nothing.
    let a = view(alice.clone()).await;
    assert_eq!((a.room.last_seq, a.room.read_seq, a.room.unread), (3, 3, 0));
    assert!(a.is_member);
    let b = view(bob.clone()).await;
    assert_eq!((b.room.last_seq, b.room.read_seq, b.room.unread), (3, 0, 3));
    let nobody = view(String::new()).await;
    assert_eq!((nobody.room.read_seq, nobody.is_member), (0, false));

    let marked = store.mark_read(&room, &bob, 2).await.unwrap();
    assert_eq!(
        (marked.read_seq, marked.moved, marked.member_count),
        (2, true, 2)
    );
    let back = store.mark_read(&room, &bob, 1).await.unwrap();
    assert_eq!((back.read_seq, back.moved), (2, false));
    assert!(back.online.is_empty(), "no move, nothing to route");
    let same = store.mark_read(&room, &bob, 2).await.unwrap();
    assert_eq!((same.read_seq, same.moved), (2, false));
    let clamped = store.mark_read(&room, &bob, u64::MAX >> 1).await.unwrap();
    assert_eq!((clamped.read_seq, clamped.moved), (3, true));
    assert_eq!(
        store.reads(&room).await.unwrap(),
        sorted_pairs(vec![(alice.clone(), 3), (bob.clone(), 3)])
    );
    let listed = store.rooms_of_user(&bob).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].last_seq, listed[0].read_seq, listed[0].unread),
        (3, 3, 0)
    );

    assert!(matches!(
        store.mark_read(&room, &mallory, 1).await,
        Err(StoreError::NotMember { .. })
    ));
    assert!(matches!(
        store.mark_read(&new_id("r_"), &bob, 1).await,
        Err(StoreError::NoRoom(_))
    ));
    assert!(store.reads(&new_id("r_")).await.unwrap().is_empty());

    // A moved marker returns the presence index for routing the receipt.
    let loc = SessionLocation {
        session: new_id("s_"),
        server_id: new_id("srv-"),
    };
    store.add_session(&alice, &loc, 60_000).await.unwrap();
    store.append(msg(&room, &bob, "m3", None)).await.unwrap();
    let moved = store.mark_read(&room, &alice, 4).await.unwrap();
    assert_eq!(
        moved.online,
        vec![online(&alice, &loc.session, &loc.server_id)]
    );
    store.remove_session(&alice, &loc.session).await.unwrap();

    // Leaving drops the marker; a member again starts from 0.
    store.remove_member(&room, &bob).await.unwrap();
    assert_eq!(store.reads(&room).await.unwrap(), vec![(alice.clone(), 4)]);
    store.add_member(&room, &bob).await.unwrap();
    assert_eq!(view(bob.clone()).await.room.read_seq, 0);
}

fn sorted_pairs(mut pairs: Vec<(String, u64)>) -> Vec<(String, u64)> {
    pairs.sort();
    pairs
}

/// Presence transitions (contract v1.1): online at a user's first live
/// session, offline at the last, decided once by the store; reaping a
/// chat server's sessions reports its users offline exactly once.
pub async fn presence_transitions_are_decided_once(store: SharedStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_with(&*store, &alice, &[&bob]).await;
    let (a, b) = (new_id("srv-a-"), new_id("srv-b-"));
    let first = store
        .add_session(&alice, &loc("s1", &a), 60_000)
        .await
        .unwrap();
    let came = first
        .came_online
        .expect("the first session brings alice online");
    assert_eq!((came.user.as_str(), came.online), (alice.as_str(), true));
    assert_eq!(came.rooms, vec![room.clone()]);
    assert!(came.ts > 0);
    let second = store
        .add_session(&alice, &loc("s2", &b), 60_000)
        .await
        .unwrap();
    assert_eq!(second.came_online, None, "a second session changes nothing");
    assert_eq!(store.remove_session(&alice, "s1").await.unwrap(), None);
    let gone = store
        .remove_session(&alice, "s2")
        .await
        .unwrap()
        .expect("the last session takes alice offline");
    assert_eq!(
        (gone.online, gone.rooms.clone()),
        (false, vec![room.clone()])
    );
    assert_eq!(store.remove_session(&alice, "s2").await.unwrap(), None);

    // Reaping: bob on two servers goes offline only with the second.
    store
        .add_session(&bob, &loc("s3", &a), 60_000)
        .await
        .unwrap();
    store
        .add_session(&bob, &loc("s4", &b), 60_000)
        .await
        .unwrap();
    assert!(store.reap_server(&a, 10).await.unwrap().is_empty());
    let reaped = store.reap_server(&b, 10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let change = &reaped[0].change;
    assert_eq!(
        (change.user.as_str(), change.online, change.rooms.clone()),
        (bob.as_str(), false, vec![room.clone()])
    );
    assert!(
        store.reap_server(&b, 10).await.unwrap().is_empty(),
        "exactly once"
    );
    assert!(
        !store.take_reaped_mark(&b).await.unwrap(),
        "a server reaping its previous run leaves itself no mark"
    );
    assert!(!store
        .sessions_of(std::slice::from_ref(&bob))
        .await
        .unwrap()
        .contains_key(&bob));
    // Coming back after a reap is a new transition.
    let again = store
        .add_session(&bob, &loc("s4", &b), 60_000)
        .await
        .unwrap();
    assert!(again.came_online.is_some());
    store.remove_session(&bob, "s4").await.unwrap();

    // Who hears about it: the presence index, unless the room is large.
    store
        .add_session(&alice, &loc("s5", &a), 60_000)
        .await
        .unwrap();
    assert_eq!(
        store.presence_audience(&room, 2).await.unwrap(),
        Some(vec![online(&alice, "s5", &a)])
    );
    assert_eq!(store.presence_audience(&room, 1).await.unwrap(), None);
    store.remove_session(&alice, "s5").await.unwrap();
}

/// Alice in two rooms with bob, one of them with carol too (over a
/// presence cap of 2), and two chat server ids.
struct PresenceRooms {
    alice: String,
    bob: String,
    small: String,
    big: String,
    a: String,
    b: String,
}

async fn presence_rooms(store: &dyn Store) -> PresenceRooms {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let small = room_with(store, &alice, &[&bob]).await;
    let big = room_with(store, &alice, &[&bob, &carol]).await;
    PresenceRooms {
        alice,
        bob,
        small,
        big,
        a: new_id("srv-a-"),
        b: new_id("srv-b-"),
    }
}

fn loc(session: &str, server_id: &str) -> SessionLocation {
    SessionLocation {
        session: session.into(),
        server_id: server_id.into(),
    }
}

/// `add_session_announced`: the audiences a store reads with the session
/// are what `presence_audience` answers (a room too big gives `None`), only
/// when the user came online, sorted by room. Returns how many of the
/// user's two rooms came with one (a store may leave them to the caller).
pub async fn presence_audiences_come_with_the_first_session(store: SharedStore) -> usize {
    let PresenceRooms {
        alice,
        bob,
        small,
        big,
        a,
        b,
    } = presence_rooms(&*store).await;
    store
        .add_session(&bob, &loc("s1", &b), 60_000)
        .await
        .unwrap();
    let first = store
        .add_session_announced(&alice, &loc("s2", &a), 60_000, 2)
        .await
        .unwrap();
    assert!(first.came_online.is_some());
    let rooms: Vec<&String> = first.presence_audiences.iter().map(|(r, _)| r).collect();
    assert!(rooms.windows(2).all(|w| w[0] < w[1]), "sorted: {rooms:?}");
    let sorted = |mut v: Vec<OnlineSession>| {
        v.sort_by(|x, y| x.session.cmp(&y.session));
        v
    };
    for (room, audience) in &first.presence_audiences {
        assert!(room == &small || room == &big, "{room}");
        let read = store.presence_audience(room, 2).await.unwrap();
        assert_eq!(audience.clone().map(sorted), read.map(sorted), "{room}");
    }
    if let Some((_, audience)) = first.presence_audiences.iter().find(|(r, _)| r == &small) {
        assert_eq!(
            audience.clone().map(sorted),
            Some(sorted(vec![
                online(&bob, "s1", &b),
                online(&alice, "s2", &a)
            ]))
        );
    }
    let second = store
        .add_session_announced(&alice, &loc("s3", &b), 60_000, 2)
        .await
        .unwrap();
    assert!(second.came_online.is_none());
    assert!(
        second.presence_audiences.is_empty(),
        "no event, no audience"
    );
    for (user, session) in [(&alice, "s2"), (&alice, "s3"), (&bob, "s1")] {
        store.remove_session(user, session).await.unwrap();
    }
    first.presence_audiences.len()
}

/// `remove_session_announced`: only the user's last session goes with an
/// "offline" transition and the audiences a store reads with it, which are
/// what `presence_audience` answers after the session left (a room too
/// big gives `None`), sorted by room; the session has left every room's
/// index either way. Returns how many of the user's two rooms came with
/// one (a store may leave them to the caller).
pub async fn presence_audiences_come_with_the_last_session(store: SharedStore) -> usize {
    let PresenceRooms {
        alice,
        bob,
        small,
        big,
        a,
        b,
    } = presence_rooms(&*store).await;
    for (who, session, server) in [(&bob, "s1", &b), (&alice, "s2", &a), (&alice, "s3", &b)] {
        store
            .add_session(who, &loc(session, server), 60_000)
            .await
            .unwrap();
    }
    let not_last = store
        .remove_session_announced(&alice, "s3", 2)
        .await
        .unwrap();
    assert_eq!(not_last, None, "alice is still online through s2");
    let last = store
        .remove_session_announced(&alice, "s2", 2)
        .await
        .unwrap()
        .expect("the last session: offline");
    assert_eq!(last.change.user, alice);
    assert!(!last.change.online);
    let mut rooms = vec![small.clone(), big.clone()];
    rooms.sort();
    assert_eq!(last.change.rooms, rooms);
    let listed: Vec<&String> = last.presence_audiences.iter().map(|(r, _)| r).collect();
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted: {listed:?}");
    for (room, audience) in &last.presence_audiences {
        assert!(room == &small || room == &big, "{room}");
        let read = store.presence_audience(room, 2).await.unwrap();
        assert_eq!(audience, &read, "{room}");
    }
    if let Some((_, audience)) = last.presence_audiences.iter().find(|(r, _)| r == &small) {
        assert_eq!(audience, &Some(vec![online(&bob, "s1", &b)]));
    }
    if let Some((_, audience)) = last.presence_audiences.iter().find(|(r, _)| r == &big) {
        assert_eq!(audience, &None, "three members: over the cap of 2");
    }
    for room in [&small, &big] {
        assert_eq!(
            sorted_online(&store, room).await,
            vec![online(&bob, "s1", &b)]
        );
    }
    store.remove_session(&bob, "s1").await.unwrap();
    last.presence_audiences.len()
}

/// `reap_dead_servers` reaps every server without health; it runs in a
/// test binary of its own (it would reap the fake servers of the scenarios
/// running beside it).
pub async fn dead_servers_are_reaped_once(store: SharedStore) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let room = room_with(&*store, &alice, &[&bob, &carol]).await;
    let (live, dead) = (new_id("srv-live-"), new_id("srv-dead-"));
    store.put_server(&health(&live, 0), 60_000).await.unwrap();
    store.put_server(&health(&dead, 0), 60_000).await.unwrap();
    store
        .add_session(&alice, &loc("s1", &live), 60_000)
        .await
        .unwrap();
    for (who, session) in [(&bob, "s2"), (&carol, "s3")] {
        store
            .add_session(who, &loc(session, &dead), 60_000)
            .await
            .unwrap();
    }
    // More users than one reaping step takes (the Redis store's
    // `REAP_CONCURRENCY`), in no room.
    let crowd: Vec<String> = (0..250).map(|i| user(&format!("crowd{i}"))).collect();
    for (i, member) in crowd.iter().enumerate() {
        store
            .add_session(member, &loc(&format!("c{i}"), &dead), 60_000)
            .await
            .unwrap();
    }
    // Only this scenario's users count: servers that other runs against
    // the same store left without health (killed in a test) are reaped
    // here too.
    let ours = |reaped: Vec<WentOffline>| -> Vec<WentOffline> {
        reaped
            .into_iter()
            .filter(|gone| {
                let user = &gone.change.user;
                user == &alice || user == &bob || user == &carol || crowd.contains(user)
            })
            .collect()
    };
    assert!(
        ours(store.reap_dead_servers(10).await.unwrap()).is_empty(),
        "both report health"
    );
    store.remove_server(&dead).await.unwrap();
    let reaped = ours(store.reap_dead_servers(10).await.unwrap());
    assert_eq!(reaped.len(), 2 + crowd.len());
    assert!(reaped.iter().all(|gone| !gone.change.online));
    let users: HashSet<&String> = reaped.iter().map(|gone| &gone.change.user).collect();
    assert!(crowd.iter().all(|member| users.contains(member)));
    // Bob and carol both left: the audience read with them (if the store
    // reads it) has only the live session.
    for member in [&bob, &carol] {
        let gone = reaped
            .iter()
            .find(|gone| &gone.change.user == member)
            .unwrap();
        assert_eq!(gone.change.rooms, vec![room.clone()]);
        for (in_room, audience) in &gone.presence_audiences {
            assert_eq!(in_room, &room);
            assert_eq!(
                audience,
                &Some(vec![online(&alice, "s1", &live)]),
                "{member}"
            );
        }
    }
    assert!(
        ours(store.reap_dead_servers(10).await.unwrap()).is_empty(),
        "exactly once"
    );
    let found = store
        .sessions_of(&[alice.clone(), bob.clone()])
        .await
        .unwrap();
    assert!(found.contains_key(&alice) && !found.contains_key(&bob));
    store.remove_session(&alice, "s1").await.unwrap();
    store.remove_server(&live).await.unwrap();
}

/// A server found silent before its health record expires (a process
/// saw its port refuse connections) is reaped at once, unless it has
/// reported since the report the caller saw; each transition still once,
/// and a reap once the record is gone reports nothing again.
pub async fn a_silent_server_is_reaped_before_its_record_expires(store: SharedStore) {
    let (alice, bob) = (user("alice"), user("bob"));
    let room = room_with(&*store, &alice, &[&bob]).await;
    let (live, quiet) = (new_id("srv-live-"), new_id("srv-quiet-"));
    store.put_server(&health(&live, 0), 60_000).await.unwrap();
    let mut last = health(&quiet, 0);
    last.last_seen_ms -= 2_000;
    store.put_server(&last, 60_000).await.unwrap();
    store
        .add_session(&alice, &loc("s1", &live), 60_000)
        .await
        .unwrap();
    store
        .add_session(&bob, &loc("s2", &quiet), 60_000)
        .await
        .unwrap();
    let seen = last.last_seen_ms;
    assert!(
        store
            .reap_silent_server(&quiet, seen - 1, 10)
            .await
            .unwrap()
            .is_empty(),
        "it reported after the report the caller saw"
    );
    assert!(
        !store.take_reaped_mark(&quiet).await.unwrap(),
        "no mark before a reap"
    );
    let reaped = store.reap_silent_server(&quiet, seen, 10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    // The mark a live server would find at its next report, taken once.
    assert!(store.take_reaped_mark(&quiet).await.unwrap());
    assert!(!store.take_reaped_mark(&quiet).await.unwrap());
    let gone = &reaped[0];
    assert_eq!(gone.change.user, bob);
    assert!(!gone.change.online);
    assert_eq!(gone.change.rooms, vec![room.clone()]);
    for (in_room, audience) in &gone.presence_audiences {
        assert_eq!(in_room, &room);
        assert_eq!(audience, &Some(vec![online(&alice, "s1", &live)]));
    }
    assert!(
        store
            .reap_silent_server(&quiet, seen, 10)
            .await
            .unwrap()
            .is_empty(),
        "exactly once"
    );
    let found = store.sessions_of(std::slice::from_ref(&bob)).await.unwrap();
    assert!(!found.contains_key(&bob));
    // Its record expires (here: removed): nothing to report again. (Not
    // `reap_dead_servers`: that would take the users of other scenarios'
    // dead servers on a shared store.)
    store.remove_server(&quiet).await.unwrap();
    assert!(store
        .reap_silent_server(&quiet, seen, 10)
        .await
        .unwrap()
        .is_empty());
    store.remove_session(&alice, "s1").await.unwrap();
    store.remove_server(&live).await.unwrap();
}

pub async fn registration_is_replaced_per_cluster(store: SharedStore) {
    let (a, b) = (new_id("ns/a-"), new_id("ns/b-"));
    let ids = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}-{i}")).collect::<Vec<_>>();
    let a_pods = ids(&a, 3);
    let b_pods = ids(&b, 1);
    store.set_registered(&a, &a_pods).await.unwrap();
    store.set_registered(&b, &b_pods).await.unwrap();
    let all = store.registered().await.unwrap();
    assert!(a_pods.iter().chain(&b_pods).all(|p| all.contains(p)));
    // Scaling cluster a down to one pod leaves b alone.
    store.set_registered(&a, &a_pods[..1]).await.unwrap();
    let all = store.registered().await.unwrap();
    assert!(all.contains(&a_pods[0]) && !all.contains(&a_pods[1]) && !all.contains(&a_pods[2]));
    assert!(all.contains(&b_pods[0]));
    // Deleting cluster a (empty set) removes all of its entries.
    store.set_registered(&a, &[]).await.unwrap();
    store.set_registered(&b, &[]).await.unwrap();
    let all = store.registered().await.unwrap();
    assert!(!all.contains(&a_pods[0]) && !all.contains(&b_pods[0]));

    // Expiry (in this scenario: it is the only one that registers, so no
    // other runs at the same time; entries other runs left in a shared
    // Redis may expire too, hence `contains`). A registration expires once its server
    // has had no health record for long enough; a live one never does.
    let (live, gone) = (format!("{a}-live"), format!("{a}-gone"));
    store
        .set_registered(&a, &[live.clone(), gone.clone()])
        .await
        .unwrap();
    store.put_server(&health(&live, 0), 60_000).await.unwrap();
    let t0 = now_ms();
    let expire = |dt: u64| {
        let store = store.clone();
        async move { store.expire_registrations(t0 + dt, 1_000).await.unwrap() }
    };
    assert!(!expire(0).await.contains(&gone), "its clock starts");
    assert!(!expire(999).await.contains(&gone));
    let expired = expire(1_000).await;
    assert!(
        expired.contains(&gone) && !expired.contains(&live),
        "{expired:?}"
    );
    let all = store.registered().await.unwrap();
    assert!(all.contains(&live) && !all.contains(&gone));
    assert!(
        !expire(1_000_000).await.contains(&live),
        "a live server's never expires"
    );
    // A server back before the end starts from zero when it goes again.
    store
        .set_registered(&a, std::slice::from_ref(&gone))
        .await
        .unwrap();
    assert!(!expire(0).await.contains(&gone));
    store.put_server(&health(&gone, 0), 60_000).await.unwrap();
    assert!(!expire(500).await.contains(&gone));
    store.remove_server(&gone).await.unwrap();
    assert!(
        !expire(1_200).await.contains(&gone),
        "unseen since 1,200 only"
    );
    assert!(expire(2_200).await.contains(&gone));
    store.set_registered(&a, &[]).await.unwrap();
    store.remove_server(&live).await.unwrap();
}

/// Expands to one `#[tokio::test]` per scenario. `$make` is an async
/// expression-producing closure `|config: StoreConfig| -> SharedStore`
/// (called with `history_retention = 5` for the retention scenarios and
/// `dedup_ttl_ms = 400` for the dedup TTL one).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            created_room_reads_back_with_members_and_index,
            membership_changes_are_idempotent_and_need_a_room,
            members_remember_the_seq_they_joined_at,
            appends_get_gapless_seqs_per_room,
            non_members_and_missing_rooms_store_nothing,
            repeated_client_msg_id_returns_the_original,
            history_pages_after_and_before,
            concurrent_appends_stay_gapless,
            registry_lists_live_servers_and_forgets_silent_ones,
            pending_tickets_count_until_taken_once,
            presence_tracks_sessions_until_removed_or_expired,
            presence_index_lists_members_sessions,
            placement_reads_where_a_users_rooms_are_online,
            appends_see_every_change_to_the_presence_index,
            read_markers_move_forward_only,
            presence_transitions_are_decided_once,
            registration_is_replaced_per_cluster,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn history_is_trimmed_to_the_retention() {
            let config = $crate::StoreConfig { history_retention: 5, ..Default::default() };
            if let Some(store) = ($make)(config).await {
                $crate::conformance::history_is_trimmed_to_the_retention(store).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_retry_after_the_dedup_ttl_is_a_new_message() {
            let config = $crate::StoreConfig { dedup_ttl_ms: 400, ..Default::default() };
            if let Some(store) = ($make)(config).await {
                $crate::conformance::a_retry_after_the_dedup_ttl_is_a_new_message(store).await;
            }
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_retry_of_a_trimmed_message_gets_its_id_and_seq() {
            let config = $crate::StoreConfig { history_retention: 5, ..Default::default() };
            if let Some(store) = ($make)(config).await {
                $crate::conformance::a_retry_of_a_trimmed_message_gets_its_id_and_seq(store).await;
            }
        }
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(store) = ($make)($crate::StoreConfig::default()).await {
                    $crate::conformance::$name(store).await;
                }
            }
        )*
    };
}
