//! `chat-client`'s live connection against the real local mode: sends over
//! the socket resolve on their `ack`, and a room tracked "from now" starts
//! after its latest message. (The fake-transport tests cover reconnects and
//! faults; the CLI tests cover REST and `tail` across drains and kills.)

use chat_client::{ChatClient, DevTokens, Event, Message};
use e2e::{eventually, unique, LocalSystem, WAIT};

async fn next_message(conn: &mut chat_client::Connection) -> Message {
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await {
            Ok(Some(Event::Message(m))) => return m,
            Ok(Some(Event::Stopped(e))) => panic!("the connection stopped: {e}"),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the connection ended"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_resolve_on_ack_and_a_room_tracked_from_now_starts_after_its_latest() {
    let local = LocalSystem::start(&[]).await;
    let api = local.api_url.as_str();
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let alice = ChatClient::new(api, DevTokens::user(api, &alice_id)).unwrap();
    let bob = ChatClient::new(api, DevTokens::user(api, &bob_id)).unwrap();
    let room = alice
        .rest()
        .create_room_named("rust-client", &[&bob_id])
        .await
        .unwrap();
    for i in 1..=3 {
        alice
            .rest()
            .publish(&room.id, &format!("earlier {i}"), None, None)
            .await
            .unwrap();
    }

    let mut bob_conn = bob.connect().await.unwrap();
    bob_conn.track(&room.id, None).unwrap();
    // The start is looked up in history in the background; wait for it so
    // that the next message is unambiguously "after now".
    eventually(WAIT, "bob's start in the room to be known", || {
        let handle = bob_conn.handle();
        let room = room.id.clone();
        async move { (handle.positions().await.ok()?.get(&room) == Some(&3)).then_some(()) }
    })
    .await;

    let alice_conn = alice.connect().await.unwrap();
    alice_conn.track(&room.id, Some(3)).unwrap();
    let mut acked = Vec::new();
    for i in 1..=5 {
        let ack = alice_conn
            .send(&room.id, &format!("live {i}"))
            .await
            .unwrap();
        assert_eq!(ack.room, room.id);
        acked.push(ack.seq);
    }
    assert_eq!(acked, vec![4, 5, 6, 7, 8], "one ack per send, in order");
    for (i, seq) in acked.iter().enumerate() {
        let m = next_message(&mut bob_conn).await;
        assert_eq!(
            (m.seq, m.body.as_str()),
            (*seq, format!("live {}", i + 1).as_str()),
            "bob gets what came after his start, in order, once (not the earlier messages)"
        );
    }
    // Nothing else for bob: a marker sent last is the next message.
    let marker = alice_conn.send(&room.id, "marker").await.unwrap();
    assert_eq!(next_message(&mut bob_conn).await.seq, marker.seq);
    let history = bob
        .rest()
        .history(&room.id, chat_client::HistoryQuery::after(0))
        .await
        .unwrap();
    assert_eq!(history.len(), 9, "each send stored once");
    bob_conn.close().await;
    alice_conn.close().await;
}
