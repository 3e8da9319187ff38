//! The conformance suite against a real Redis Cluster.
//!
//! Needs `CHAT_TEST_REDIS_URLS` (comma-separated node URLs), which
//! `scripts/test.sh` sets after starting `scripts/redis-cluster.sh`. Without
//! it the tests print a notice and pass, unless `CHAT_TEST_REQUIRE_REDIS=1`
//! (set by `scripts/test.sh` and CI) makes a missing cluster a failure.

#[path = "support/redis.rs"]
mod support;
use support::make;

chat_store::store_conformance_tests!(make);

/// The Redis store reads every room's presence audience with the
/// session's joins (one script per room at connect, not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_audiences_come_with_the_first_session() {
    let Some(store) = make(chat_store::StoreConfig::default()).await else {
        return;
    };
    let filled =
        chat_store::conformance::presence_audiences_come_with_the_first_session(store).await;
    assert_eq!(filled, 2, "both rooms' audiences");
}

/// And with the last session's removal (one script per room at close,
/// not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_audiences_come_with_the_last_session() {
    let Some(store) = make(chat_store::StoreConfig::default()).await else {
        return;
    };
    let filled =
        chat_store::conformance::presence_audiences_come_with_the_last_session(store).await;
    assert_eq!(filled, 2, "both rooms' audiences");
}

/// Durability: with `min_replica_acks = 1` an append returns only once a
/// replica has it; asking for more replicas than exist refuses the ack
/// (the message is stored, and a retry with its client_msg_id finds it).
mod durability {
    use chat_protocol::ids::new_id;
    use chat_protocol::now_ms;
    use chat_store::{NewMessage, StoreConfig, StoreError};

    async fn room_and_message(store: &dyn chat_store::Store) -> NewMessage {
        let room = chat_store::conformance::room_with(store, "alice", &[]).await;
        NewMessage {
            room,
            id: new_id("m_"),
            from: "alice".into(),
            body: "keep me".into(),
            ts: now_ms(),
            client_msg_id: Some("c1".into()),
            from_member: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_ack_succeeds_on_a_cluster_with_replicas() {
        let Some(store) = super::make(StoreConfig {
            min_replica_acks: 1,
            ..StoreConfig::default()
        })
        .await
        else {
            return;
        };
        let m = room_and_message(&*store).await;
        let appended = store.append(m).await.unwrap();
        assert_eq!(appended.message.seq, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_few_replica_acks_refuse_the_ack_but_keep_the_message() {
        let Some(store) = super::make(StoreConfig {
            min_replica_acks: 5,
            replica_ack_timeout_ms: 100,
            ..StoreConfig::default()
        })
        .await
        else {
            return;
        };
        let m = room_and_message(&*store).await;
        let room = m.room.clone();
        assert!(matches!(
            store.append(m.clone()).await,
            Err(StoreError::Unavailable(_))
        ));
        // Stored once, and the retry does not store a copy.
        assert!(matches!(
            store.append(m).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(store.messages_after(&room, 0, 10).await.unwrap().len(), 1);
    }
}

/// Rooms from before the Stream history (no `log` field in their meta):
/// their sorted-set history and per-send dedup keys keep answering beside
/// the Stream during and after a rolling upgrade.
mod legacy_layout {
    use chat_store::{keys, NewMessage, Store, StoreConfig};
    use redis::AsyncCommands;

    fn send(room: &str, body: &str, client_msg_id: Option<&str>) -> NewMessage {
        chat_store::conformance::msg(room, "alice", body, client_msg_id)
    }

    fn old_json(room: &str, seq: u64, cmid: &str) -> String {
        format!(
            r#"{{"body":"old {seq}","client_msg_id":"{cmid}","from":"alice","id":"m_old{seq}","room":"{room}","ts":1,"seq":{seq}}}"#
        )
    }

    /// A room as the sorted-set version left it: seqs 1..=3 in `msgs`,
    /// dedup keys for `c-1` (the JSON, the oldest format) and `c-2`
    /// (`<seq> <id>`).
    async fn legacy_room(store: &dyn Store, urls: Vec<String>) -> String {
        let room = chat_store::conformance::room_with(store, "alice", &[]).await;
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let _: () = conn.hdel(keys::room_meta(&room), "log").await.unwrap();
        for seq in 1..=3u64 {
            let json = old_json(&room, seq, &format!("c-{seq}"));
            let _: () = conn
                .zadd(keys::room_messages(&room), json, seq)
                .await
                .unwrap();
        }
        let _: () = conn.set(keys::room_seq(&room), 3).await.unwrap();
        let _: () = conn
            .set_ex(
                keys::room_dedup(&room, "alice", "c-1"),
                old_json(&room, 1, "c-1"),
                60,
            )
            .await
            .unwrap();
        let _: () = conn
            .set_ex(keys::room_dedup(&room, "alice", "c-2"), "2 m_old2", 60)
            .await
            .unwrap();
        room
    }

    fn seqs(messages: Vec<chat_protocol::Message>) -> Vec<u64> {
        messages.into_iter().map(|m| m.seq).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_history_and_dedup_records_answer_beside_the_stream() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let Some(store) = super::make(StoreConfig::default()).await else {
            return;
        };
        let room = legacy_room(&*store, urls).await;
        let new = store.append(send(&room, "new", Some("c-4"))).await.unwrap();
        assert_eq!((new.message.seq, new.duplicate), (4, false));
        assert_eq!(
            seqs(store.messages_after(&room, 0, 50).await.unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(seqs(store.messages_after(&room, 2, 1).await.unwrap()), [3]);
        assert_eq!(
            seqs(store.messages_before(&room, 5, 2).await.unwrap()),
            [3, 4]
        );
        assert_eq!(
            seqs(store.messages_before(&room, 4, 50).await.unwrap()),
            [1, 2, 3]
        );
        let history = store.messages_after(&room, 0, 50).await.unwrap();
        assert_eq!(history[0].body, "old 1");
        assert_eq!(history[3].body, "new");

        for (cmid, seq) in [("c-1", 1), ("c-2", 2), ("c-4", 4)] {
            let retry = store
                .append(send(&room, "again", Some(cmid)))
                .await
                .unwrap();
            assert!(retry.duplicate, "{cmid}");
            assert_eq!(retry.message.seq, seq, "{cmid}");
            let id = if seq == 4 {
                new.message.id.clone()
            } else {
                format!("m_old{seq}")
            };
            assert_eq!(retry.message.id, id, "{cmid}");
            let body = if seq == 4 {
                "new".to_owned()
            } else {
                format!("old {seq}")
            };
            assert_eq!(retry.message.body, body, "{cmid}: the original's body");
        }
        assert_eq!(
            seqs(store.messages_before(&room, u64::MAX, 1).await.unwrap()),
            [4]
        );
    }

    /// Once the Stream alone holds the retention, the sorted set goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_history_goes_once_the_stream_holds_the_retention() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let config = StoreConfig {
            history_retention: 5,
            ..Default::default()
        };
        let Some(store) = super::make(config).await else {
            return;
        };
        let room = legacy_room(&*store, urls.clone()).await;
        for i in 4..=255u64 {
            store
                .append(send(&room, &format!("m{i}"), None))
                .await
                .unwrap();
        }
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let legacy = keys::room_messages(&room);
        assert!(
            conn.exists::<_, bool>(&legacy).await.unwrap(),
            "kept until the check"
        );
        store.append(send(&room, "m256", None)).await.unwrap();
        assert!(!conn.exists::<_, bool>(&legacy).await.unwrap());
        assert_eq!(
            seqs(store.messages_after(&room, 0, 50).await.unwrap()),
            [252, 253, 254, 255, 256]
        );
    }
}

/// Rooms created before joins were recorded (no `joins` field in their
/// meta) answer "unknown" for the members they had, not "from the start":
/// a session then keeps its old behaviour instead of replaying history.
mod join_records {
    use chat_store::{keys, StoreConfig};
    use redis::AsyncCommands;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_from_before_join_records_knows_only_later_joins() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let Some(store) = super::make(StoreConfig::default()).await else {
            return;
        };
        let room = chat_store::conformance::room_with(&*store, "alice", &[]).await;
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let _: () = conn.hdel(keys::room_meta(&room), "joins").await.unwrap();
        assert_eq!(store.joined_seq(&room, "alice").await.unwrap(), None);
        assert!(store.add_member(&room, "bob").await.unwrap());
        assert_eq!(store.joined_seq(&room, "bob").await.unwrap(), Some(0));
    }
}

/// Group commit (issue 13): appends bound for one master while a batch is
/// out go together, with one WAIT, and still get gapless seqs, once each.
mod group_commit {
    use chat_protocol::ids::new_id;
    use chat_protocol::now_ms;
    use chat_store::{NewMessage, RedisStore, Store, StoreConfig};
    use futures_util::future::join_all;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_pipelines_and_stay_gapless() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let config = StoreConfig {
            min_replica_acks: 1,
            ..StoreConfig::default()
        };
        let store = RedisStore::connect(&urls, config).await.unwrap();
        let mut rooms = Vec::new();
        for _ in 0..12 {
            rooms.push(chat_store::conformance::room_with(&store, "alice", &[]).await);
        }
        const PER_ROOM: usize = 40;
        for wave in 0..2 {
            let appends = rooms.iter().flat_map(|room| {
                (0..PER_ROOM / 2).map(move |i| NewMessage {
                    room: room.clone(),
                    id: new_id("m_"),
                    from: "alice".into(),
                    body: format!("{wave}-{i}"),
                    ts: now_ms(),
                    client_msg_id: (i % 2 == 0).then(|| format!("c-{wave}-{i}")),
                    from_member: true,
                })
            });
            for result in join_all(appends.map(|m| store.append(m))).await {
                let appended = result.expect("append");
                assert!(!appended.duplicate);
            }
        }
        for room in &rooms {
            let history = store.messages_after(room, 0, 100).await.unwrap();
            let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=PER_ROOM as u64).collect::<Vec<_>>(), "{room}");
        }
        let stats = store.group_commit_stats().unwrap();
        println!("[group-commit] {stats:?}");
        assert_eq!(stats.batched + stats.alone, (rooms.len() * PER_ROOM) as u64);
        assert!(stats.batched > 0, "{stats:?}");
        assert!(
            stats.batches < stats.batched,
            "some batch held more than one: {stats:?}"
        );
    }
}

/// The registry as chat servers of the previous release left it: their
/// hosted users in the registry's slot (`chat:{registry}:hosted:<id>`),
/// their server in `hosts` with each session. Reaping a server whose
/// process is gone finds those users too, during and after a rolling
/// upgrade.
mod legacy_registry {
    use chat_store::{keys, SessionLocation, StoreConfig};
    use redis::AsyncCommands;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn users_hosted_in_the_registry_slot_are_reaped_with_the_new_ones() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let Some(store) = super::make(StoreConfig::default()).await else {
            return;
        };
        let (old_user, new_user) = (
            chat_protocol::ids::new_id("old-"),
            chat_protocol::ids::new_id("new-"),
        );
        let room = chat_store::conformance::room_with(&*store, &old_user, &[&new_user]).await;
        let server = chat_protocol::ids::new_id("srv-");
        let at = |session: &str| SessionLocation {
            session: session.into(),
            server_id: server.clone(),
        };
        // The old release's session: its record, and the hosted entry
        // where that release wrote it.
        store
            .add_session(&old_user, &at("s-old"), 60_000)
            .await
            .unwrap();
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let _: () = conn
            .srem(keys::server_hosted(&server), &old_user)
            .await
            .unwrap();
        let _: () = conn
            .sadd(keys::registry_hosted(&server), &old_user)
            .await
            .unwrap();
        // This release's session on the same server id (restarted in place),
        // which joined `hosts` with its health.
        let health = chat_store::conformance::health(&server, 1);
        store.put_server(&health, 60_000).await.unwrap();
        store
            .add_session(&new_user, &at("s-new"), 60_000)
            .await
            .unwrap();
        let hosts: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(hosts, "the server joined `hosts` with its health");

        // It stopped (its health is gone): reaping it takes every user.
        // (`reap_server`, not `reap_dead_servers`: that would reap the
        // servers of the tests running beside this one.)
        store.remove_server(&server).await.unwrap();
        let mut reaped: Vec<_> = store
            .reap_server(&server, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|gone| gone.change)
            .collect();
        reaped.sort_by(|a, b| a.user.cmp(&b.user));
        let users: Vec<(&str, bool)> = reaped.iter().map(|c| (c.user.as_str(), c.online)).collect();
        let mut expected = vec![(new_user.as_str(), false), (old_user.as_str(), false)];
        expected.sort();
        assert_eq!(users, expected, "both users reported offline");
        assert!(reaped.iter().all(|c| c.rooms == vec![room.clone()]));
        for key in [keys::server_hosted(&server), keys::registry_hosted(&server)] {
            let left: u64 = conn.scard(&key).await.unwrap();
            assert_eq!(left, 0, "{key} emptied");
        }
        let hosts: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(!hosts, "a server that hosts nobody leaves `hosts`");
    }
}

/// Two processes reap a dead server at once, each taking some of its
/// users: a room's index may still hold the dead sessions of users the
/// other reaper took. The audiences read with this reaper's forgets leave
/// them out (no offline event is owed to a dead session).
mod concurrent_reapers {
    use chat_store::{keys, OnlineSession, SessionLocation, StoreConfig};
    use redis::AsyncCommands;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audiences_read_with_a_reap_leave_out_the_dead_servers_sessions() {
        let Some(urls) = chat_store::conformance::test_redis_urls() else {
            return;
        };
        let Some(store) = super::make(StoreConfig::default()).await else {
            return;
        };
        let user = |name: &str| chat_protocol::ids::new_id(&format!("{name}-"));
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let room = chat_store::conformance::room_with(&*store, &alice, &[&bob, &carol]).await;
        let (live, dead) = (
            chat_protocol::ids::new_id("srv-live-"),
            chat_protocol::ids::new_id("srv-dead-"),
        );
        let at = |session: &str, server: &str| SessionLocation {
            session: session.into(),
            server_id: server.into(),
        };
        for (who, session, server) in [
            (&alice, "s1", &live),
            (&bob, "s2", &dead),
            (&carol, "s3", &dead),
        ] {
            store
                .add_session(who, &at(session, server), 60_000)
                .await
                .unwrap();
        }
        // The other reaper took carol: her record and hosted entry are
        // gone, her session not yet out of the room's index.
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        let _: () = conn.hdel(keys::user_sessions(&carol), "s3").await.unwrap();
        let _: () = conn.srem(keys::server_hosted(&dead), &carol).await.unwrap();

        let reaped = store.reap_server(&dead, 10).await.unwrap();
        assert_eq!(reaped.len(), 1, "bob only");
        assert_eq!(reaped[0].change.user, bob);
        let alice_only = Some(vec![OnlineSession {
            user: alice.clone(),
            session: "s1".into(),
            server_id: live.clone(),
        }]);
        assert_eq!(
            reaped[0].presence_audiences,
            vec![(room.clone(), alice_only)]
        );
        store.remove_session(&alice, "s1").await.unwrap();
    }
}

/// A dead server's users are claimed in chunks (`REAP_CHUNK_USERS`, 500),
/// so concurrent reapers share them instead of each trying every user.
/// (`reap_silent_server` with no health record left: the reapers' path,
/// without `reap_dead_servers`, which would reap the servers of the tests
/// running beside these.)
mod reap_claims {
    use std::collections::HashSet;

    use chat_store::{keys, SessionLocation, StoreConfig};
    use redis::AsyncCommands;

    const CHUNK: usize = 500;

    /// A store on the test cluster and a connection of the test's own to
    /// it (`None` without one).
    async fn store_and_connection() -> Option<(
        chat_store::conformance::SharedStore,
        redis::cluster_async::ClusterConnection,
    )> {
        let urls = chat_store::conformance::test_redis_urls()?;
        let store = super::make(StoreConfig::default()).await?;
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        Some((store, client.get_async_connection().await.unwrap()))
    }

    /// A dead server hosting `n` users, one session each, in no room;
    /// its users sorted as the reap cuts them into chunks.
    async fn dead_server_with(
        store: &chat_store::conformance::SharedStore,
        n: usize,
    ) -> (String, Vec<String>) {
        let server = chat_protocol::ids::new_id("srv-dead-");
        store
            .put_server(&chat_store::conformance::health(&server, 0), 60_000)
            .await
            .unwrap();
        let prefix = chat_protocol::ids::new_id("u-");
        let mut users: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
        users.sort();
        let at = SessionLocation {
            session: "s".into(),
            server_id: server.clone(),
        };
        for user in &users {
            store.add_session(user, &at, 60_000).await.unwrap();
        }
        store.remove_server(&server).await.unwrap();
        (server, users)
    }

    /// `assert_eq!` without printing a thousand ids.
    fn same_users(got: &[String], want: &[String], what: &str) {
        let first = |v: &[String]| v.first().cloned().unwrap_or_default();
        assert!(
            got == want,
            "{what}: {} users from {} against {} from {}",
            got.len(),
            first(got),
            want.len(),
            first(want)
        );
    }

    fn sorted_users(reaped: &[chat_store::WentOffline]) -> Vec<String> {
        let mut users: Vec<String> = reaped.iter().map(|gone| gone.change.user.clone()).collect();
        users.sort();
        users
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reaper_skips_the_chunks_others_claimed_and_unhosts_only_those_tried() {
        let Some((store, mut conn)) = store_and_connection().await else {
            return;
        };
        let (server, users) = dead_server_with(&store, 2 * CHUNK + 100).await;
        // Another reaper is trying the first chunk, and a third is done
        // with the second: it took those users' sessions, and could not
        // unhost them (the server's health record still lived).
        let list = keys::user_list_digest(&users);
        let claim = |chunk| keys::server_reap_claim(&server, list, chunk);
        let _: () = conn.set_ex(claim(0), "taken", 60).await.unwrap();
        for user in &users[CHUNK..2 * CHUNK] {
            let _: () = conn.hdel(keys::user_sessions(user), "s").await.unwrap();
        }
        let _: () = conn.set_ex(claim(1), "done", 60).await.unwrap();

        let reaped = store.reap_silent_server(&server, 0, 10).await.unwrap();
        same_users(
            &sorted_users(&reaped),
            &users[2 * CHUNK..],
            "the third chunk only",
        );
        let mut hosted: Vec<String> = conn.smembers(keys::server_hosted(&server)).await.unwrap();
        hosted.sort();
        same_users(
            &hosted,
            &users[..CHUNK],
            "the chunk still being tried stays hosted",
        );
        let listed: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(listed, "a server that still hosts users stays in `hosts`");

        // The first chunk's reaper died: the list is shorter now (its own
        // claims), so the next reaper tries those users.
        let reaped = store.reap_silent_server(&server, 0, 10).await.unwrap();
        same_users(&sorted_users(&reaped), &users[..CHUNK], "the first chunk");
        let left: u64 = conn.scard(keys::server_hosted(&server)).await.unwrap();
        assert_eq!(left, 0);
        let listed: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(!listed, "a server that hosts nobody leaves `hosts`");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reapers_report_each_user_once_and_unhost_all() {
        let Some((store, mut conn)) = store_and_connection().await else {
            return;
        };
        let (server, users) = dead_server_with(&store, 3 * CHUNK + 1).await;
        let (a, b, c) = tokio::join!(
            store.reap_silent_server(&server, 0, 10),
            store.reap_silent_server(&server, 0, 10),
            store.reap_silent_server(&server, 0, 10),
        );
        let mut all: Vec<chat_store::WentOffline> = Vec::new();
        for reaped in [a, b, c] {
            all.extend(reaped.unwrap());
        }
        same_users(&sorted_users(&all), &users, "every user once");
        let distinct: HashSet<&String> = all.iter().map(|gone| &gone.change.user).collect();
        assert_eq!(distinct.len(), users.len());
        let left: u64 = conn.scard(keys::server_hosted(&server)).await.unwrap();
        assert_eq!(left, 0, "the last reaper done unhosts");
        let listed: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(!listed);
    }

    /// A restarted server's reap of its previous run (`reap_server`) tries
    /// every user, claimed or not: it must not take sessions while another
    /// reaper may still drop its users' sessions there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_servers_reap_tries_every_user_claimed_or_not() {
        let Some((store, mut conn)) = store_and_connection().await else {
            return;
        };
        let (server, users) = dead_server_with(&store, CHUNK + 1).await;
        let list = keys::user_list_digest(&users);
        for chunk in 0..2 {
            let claim = keys::server_reap_claim(&server, list, chunk);
            let _: () = conn.set_ex(claim, "taken", 60).await.unwrap();
        }
        let reaped = store.reap_server(&server, 10).await.unwrap();
        same_users(&sorted_users(&reaped), &users, "every user");
        let listed: bool = conn.sismember(keys::REGISTRY_HOSTS, &server).await.unwrap();
        assert!(!listed);
    }
}
