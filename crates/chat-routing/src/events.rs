//! The ephemeral events of contract v1.1 that follow a room's presence
//! index like messages do, but are neither stored nor ordered by seq:
//! `read` (a member's marker moved) and `presence` (a member came online or
//! went offline). Both cost something only when they happen (a read, a
//! connect or disconnect), never per message.

use std::collections::HashMap;
use std::sync::Arc;

use chat_protocol::ServerFrame;
use chat_store::{MarkedRead, OnlineSession, PresenceChange, Store, WentOffline};

use crate::router::{MessageRouter, Recipients};

/// How far the v1.1 events fan out, by room size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct FanoutLimits {
    /// Rooms of at most this many members get read receipts (every
    /// member sees every member's `read`); in larger rooms a `read` goes
    /// only to the reader's own sessions.
    #[arg(long, env = "CHAT_READ_RECEIPTS_MAX_MEMBERS", default_value_t = READ_RECEIPTS_MAX_MEMBERS)]
    pub read_receipts_max_members: u64,
    /// Rooms of more than this many members get no `presence` events (the
    /// members list's `online` flag stays right).
    #[arg(long, env = "CHAT_PRESENCE_MAX_ROOM_MEMBERS", default_value_t = PRESENCE_MAX_ROOM_MEMBERS)]
    pub presence_max_room_members: u64,
}

/// The contract's sizes: read receipts in rooms of at most 100 members,
/// presence events may be left out above 1,000.
const READ_RECEIPTS_MAX_MEMBERS: u64 = 100;
const PRESENCE_MAX_ROOM_MEMBERS: u64 = 1000;
/// Users reaped with a dead server announced at once (each in all their
/// rooms at once; reads the reap left out wait for a turn of
/// `PRESENCE_READS_IN_FLIGHT`).
const REAPED_ANNOUNCED_AT_ONCE: usize = 64;

impl Default for FanoutLimits {
    fn default() -> Self {
        FanoutLimits {
            read_receipts_max_members: READ_RECEIPTS_MAX_MEMBERS,
            presence_max_room_members: PRESENCE_MAX_ROOM_MEMBERS,
        }
    }
}

impl MessageRouter {
    /// Sends `{"type":"read"}` for a marker that moved: to every session
    /// of the reader, and to the other members too in small rooms.
    pub async fn route_read(&self, room: &str, user: &str, marked: &MarkedRead) -> usize {
        if !marked.moved {
            return 0;
        }
        let frame: Arc<str> = Arc::from(
            ServerFrame::Read {
                room: room.to_owned(),
                user: user.to_owned(),
                seq: marked.read_seq,
            }
            .to_json(),
        );
        let recipients = if marked.member_count <= self.fanout_limits().read_receipts_max_members {
            Recipients::All
        } else {
            Recipients::Only(user)
        };
        self.route_ephemeral(room, frame, &marked.online, recipients)
            .await
    }

    /// Announces a presence transition in each of the user's rooms (those
    /// small enough) to the other members' sessions. `audiences` are the
    /// rooms' audiences read already (`Store::add_session_announced`,
    /// `Store::remove_session_announced`, a reap), sorted by room; the
    /// other rooms' are read here, taking turns. Best effort: a room whose
    /// audience cannot be read is skipped with a warning. The rooms are
    /// handled concurrently: no round trip per room one after another.
    pub async fn announce_presence_to(
        &self,
        change: &PresenceChange,
        audiences: &[(String, Option<Vec<OnlineSession>>)],
    ) -> usize {
        let max_members = self.fanout_limits().presence_max_room_members;
        let per_room = change.rooms.iter().map(|room| async move {
            let known = audiences
                .binary_search_by(|(r, _)| r.as_str().cmp(room))
                .ok()
                .map(|i| &audiences[i].1);
            let read;
            let online: &[OnlineSession] = match known {
                Some(Some(online)) => online,
                Some(None) => return 0,
                None => match self.read_audience(room, max_members).await {
                    Ok(Some(online)) => {
                        read = online;
                        &read
                    }
                    Ok(None) => return 0,
                    Err(e) => {
                        tracing::warn!(error = %e, room, "presence event not sent");
                        return 0;
                    }
                },
            };
            let frame: Arc<str> = Arc::from(
                ServerFrame::Presence {
                    room: room.clone(),
                    user: change.user.clone(),
                    online: change.online,
                    ts: change.ts,
                }
                .to_json(),
            );
            self.route_ephemeral(room, frame, online, Recipients::AllBut(&change.user))
                .await
        });
        futures_util::future::join_all(per_room)
            .await
            .into_iter()
            .sum()
    }

    /// Announces the users reaped with a dead server (`Store::reap_*`):
    /// a server's users go offline together, so several are announced at
    /// once (one after another, thousands took seconds past the 5 s the
    /// contract gives); their audiences mostly come with the reap.
    pub async fn announce_reaped(&self, reaped: &[WentOffline]) -> usize {
        use futures_util::StreamExt;
        // The futures made first (they do nothing until polled): mapped
        // inside the stream, the spawned reaper's future is not `Send` for
        // every lifetime (a known limit of the compiler with closures over
        // borrows).
        let announcing: Vec<_> = reaped
            .iter()
            .map(|gone| self.announce_presence_to(&gone.change, &gone.presence_audiences))
            .collect();
        let sent: Vec<usize> = futures_util::stream::iter(announcing)
            .buffer_unordered(REAPED_ANNOUNCED_AT_ONCE)
            .collect()
            .await;
        sent.into_iter().sum()
    }

    /// A room's presence audience, read once one of the
    /// [`crate::router::PRESENCE_READS_IN_FLIGHT`] turns is free.
    async fn read_audience(
        &self,
        room: &str,
        max_members: u64,
    ) -> chat_store::StoreResult<Option<Vec<OnlineSession>>> {
        // Never closed, so a turn always comes.
        let _turn = self.presence_reads.acquire().await;
        self.store().presence_audience(room, max_members).await
    }
}

/// How long a registered chat server may have no health record before its
/// registration expires (see `Store::expire_registrations`): far longer
/// than any restart or partition, since the operator registers its ready
/// pods again within seconds anyway.
pub const REGISTRATION_EXPIRES_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the reaper looks for such registrations.
const REGISTRATION_EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a process looks for dead chat servers: a twelfth of the time
/// a server may be silent before it counts as dead (250 ms for the default
/// 3 s), at least every 50 ms. The contract gives 5 s from a server's death
/// to its users' offline events; with a look every second, up to a second
/// of that went to waiting for the next look after the health record had
/// expired. A look is two reads in the registry's slot.
pub fn presence_reap_interval(dead_after: std::time::Duration) -> std::time::Duration {
    (dead_after / 12).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(250),
    )
}

/// Reaps dead chat servers' sessions on a timer and announces their users
/// offline; now and then it also expires the registrations of servers long
/// gone. Every process that routes runs one; the store decides each
/// transition once, so running it everywhere is safe and makes it prompt.
pub fn spawn_presence_reaper(
    router: Arc<MessageRouter>,
    store: Arc<dyn Store>,
    interval: std::time::Duration,
) {
    let weak = Arc::downgrade(&router);
    drop(router);
    tokio::spawn(async move {
        let mut last_expiry = tokio::time::Instant::now();
        // Per server, the report after which this process reaped it.
        let mut reaped_after: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::time::sleep(interval).await;
            let Some(router) = weak.upgrade() else { return };
            if last_expiry.elapsed() >= REGISTRATION_EXPIRY_EVERY {
                last_expiry = tokio::time::Instant::now();
                let after = REGISTRATION_EXPIRES_AFTER.as_millis() as u64;
                match store
                    .expire_registrations(chat_protocol::now_ms(), after)
                    .await
                {
                    Ok(expired) if !expired.is_empty() => tracing::info!(
                        ?expired,
                        "registrations of chat servers without health for an hour expired"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "expiring registrations failed"),
                }
            }
            let presence_max = router.fanout_limits().presence_max_room_members;
            match store.reap_dead_servers(presence_max).await {
                Ok(reaped) => {
                    router.announce_reaped(&reaped).await;
                }
                Err(e) => tracing::debug!(error = %e, "reaping dead chat servers failed"),
            }
            reap_refusing_servers(&router, &store, &mut reaped_after, presence_max).await;
        }
    });
}

/// A chat server whose health reports failed for this long may have been
/// reaped meanwhile (its record expired, or a process found its port
/// refusing): it announces its sessions again once it reports. Half the
/// dead-after interval. Only a fallback: a reaper marks the server it
/// reaps (`Store::take_reaped_mark`), which the server reads at every
/// report, so a reap that lands after a timely report is noticed too.
pub fn may_have_been_reaped_after(dead_after: std::time::Duration) -> std::time::Duration {
    dead_after / 2
}

/// How long a server must have been silent for its port to be probed, and
/// it reaped at once if the port refuses: 0.4 of the dead-after interval
/// (1.2 s by default; servers report every second, so one report is late).
/// A live server accepts the probe whatever its reports do, and one reaped
/// all the same (a firewall that rejects rather than drops) finds the mark
/// at its next report and announces its sessions again.
fn refusing_server_reaped_after(dead_after: std::time::Duration) -> std::time::Duration {
    dead_after * 2 / 5
}

/// Reaps the live servers that have not reported their health for 0.4 of
/// the dead-after interval (1.2 s by default: a report is late, they
/// report every second) and whose port refuses a connection now (probed
/// here: a TCP connect, at most 200 ms, all at once): nothing listens
/// where they served, so they are dead (a SIGKILL, a crash), and waiting
/// for the record to expire would spend up to 3 s of the contract's 5 s
/// for nothing. A server cut off by a partition times out rather than
/// refuses, a frozen one still accepts (its kernel answers), and one that
/// is alive reports, so none of them is reaped here; a server that
/// reported since the report this process saw is left alone by the store
/// (`Store::reap_silent_server`). `reaped_after` keeps, per server, the
/// report after which this process reaped it: one reap per silence.
async fn reap_refusing_servers(
    router: &MessageRouter,
    store: &Arc<dyn Store>,
    reaped_after: &mut HashMap<String, u64>,
    presence_max: u64,
) {
    let now = chat_protocol::now_ms();
    let dead_after = std::time::Duration::from_millis(router.registry().config().dead_after_ms);
    let silent_after = refusing_server_reaped_after(dead_after).as_millis() as u64;
    let live = router.registry().live();
    reaped_after.retain(|id, _| live.iter().any(|s| &s.health.id == id));
    let silent = live
        .iter()
        .map(|s| &s.health)
        .filter(|h| now.saturating_sub(h.last_seen_ms) >= silent_after)
        .filter(|h| reaped_after.get(&h.id) != Some(&h.last_seen_ms));
    let probes = silent.map(|h| async move { port_refuses(&h.internal_url).await.then_some(h) });
    let refusing: Vec<_> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    for health in refusing {
        let (id, seen) = (&health.id, health.last_seen_ms);
        match store.reap_silent_server(id, seen, presence_max).await {
            Ok(reaped) => {
                reaped_after.insert(id.clone(), seen);
                // Nothing reaped: it reported since, or it was reaped.
                if !reaped.is_empty() {
                    tracing::info!(
                        server_id = %id,
                        silent_ms = now.saturating_sub(seen),
                        users = reaped.len(),
                        "reaped a chat server whose port refuses connections and whose reports stopped"
                    );
                }
                router.announce_reaped(&reaped).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, server_id = %id, "reaping a refusing chat server failed")
            }
        }
    }
}

/// Whether the host and port of `url` refuse a TCP connection (nothing
/// listens there); a timeout or any other error is no answer.
async fn port_refuses(url: &str) -> bool {
    use tokio_tungstenite::tungstenite::http::Uri;
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let tls = matches!(uri.scheme_str(), Some("wss" | "https"));
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(200), connect).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_store::conformance::{health, room_with};
    use chat_store::{MemoryStore, SessionLocation};
    use std::time::Duration;

    fn loc(session: &str, server_id: &str) -> SessionLocation {
        SessionLocation {
            session: session.into(),
            server_id: server_id.into(),
        }
    }

    /// Bob on `bobs` server and carol on `carols` (their health is in
    /// the store already), and a router whose registry has read them.
    async fn bob_and_carol_on(store: &Arc<dyn Store>, bobs: &str, carols: &str) -> MessageRouter {
        for (user, session, server) in [("bob", "s1", bobs), ("carol", "s2", carols)] {
            store
                .add_session(user, &loc(session, server), 60_000)
                .await
                .unwrap();
        }
        crate::router::tests::router_on(store).await
    }

    /// A server whose port refuses is reaped once a report is late
    /// (silent for 0.4 of the dead-after interval), once per silence; one
    /// that still reports is not, refused or not. The reap leaves the mark
    /// that would make the server, were it alive, announce its sessions
    /// again at its next report.
    #[tokio::test]
    async fn a_refusing_server_is_reaped_once_it_is_silent_and_only_then() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        room_with(&*store, "alice", &["bob", "carol"]).await;
        let mut quiet = health("quiet", 0);
        quiet.last_seen_ms -= 2_000;
        store.put_server(&quiet, 60_000).await.unwrap();
        store.put_server(&health("busy", 0), 60_000).await.unwrap();
        let router = bob_and_carol_on(&store, "quiet", "busy").await;
        // Both ports refuse (`health` points at 127.0.0.1:1); busy reports.
        let mut reaped_after = HashMap::new();
        reap_refusing_servers(&router, &store, &mut reaped_after, 10).await;
        let online = |user: &str| {
            let store = store.clone();
            let user = user.to_owned();
            async move {
                store
                    .sessions_of(&[user.clone()])
                    .await
                    .unwrap()
                    .contains_key(&user)
            }
        };
        assert!(!online("bob").await, "quiet missed a report and refuses");
        assert!(
            online("carol").await,
            "busy reports: refusing or not, it lives"
        );
        assert_eq!(reaped_after.get("quiet"), Some(&quiet.last_seen_ms));
        // Bob comes back on the same server (say, it restarted): the same
        // silence is not reaped twice.
        store
            .add_session("bob", &loc("s3", "quiet"), 60_000)
            .await
            .unwrap();
        reap_refusing_servers(&router, &store, &mut reaped_after, 10).await;
        assert!(online("bob").await);
        // The first reap left the mark a live server would find at its
        // next report (and announce its sessions again).
        assert!(store.take_reaped_mark("quiet").await.unwrap());
        assert!(
            !store.take_reaped_mark("quiet").await.unwrap(),
            "taken once"
        );
    }

    /// A silent server's port is probed: refusing, the server is reaped;
    /// accepting (a live server whose reports are late), it is not.
    #[tokio::test]
    async fn a_silent_server_is_probed_and_reaped_only_if_its_port_refuses() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        room_with(&*store, "alice", &["bob", "carol"]).await;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_at = closed.local_addr().unwrap();
        drop(closed);
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut dead = health("dead", 0);
        dead.internal_url = format!("ws://{closed_at}/internal/link");
        let mut late = health("late", 0);
        late.internal_url = format!("ws://{}/internal/link", open.local_addr().unwrap());
        for server in [&mut dead, &mut late] {
            server.last_seen_ms -= 2_000;
            store.put_server(server, 60_000).await.unwrap();
        }
        let router = bob_and_carol_on(&store, "dead", "late").await;
        let mut reaped_after = HashMap::new();
        reap_refusing_servers(&router, &store, &mut reaped_after, 10).await;
        let users: Vec<String> = vec!["bob".into(), "carol".into()];
        let online = store.sessions_of(&users).await.unwrap();
        assert!(
            !online.contains_key("bob"),
            "nothing listens where dead served"
        );
        assert!(
            online.contains_key("carol"),
            "late's port accepts: it lives"
        );
        drop(open);
    }

    /// A dead server is found within a twelfth of its dead-after interval
    /// of its health record expiring: 250 ms of the contract's 5 s with the
    /// default 3 s, never busier than every 50 ms for short test intervals.
    #[test]
    fn the_reaper_looks_twelve_times_per_dead_after_interval_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(presence_reap_interval(ms(3000)), ms(250));
        assert_eq!(presence_reap_interval(ms(1200)), ms(100));
        assert_eq!(presence_reap_interval(ms(300)), ms(50));
        assert_eq!(presence_reap_interval(ms(60_000)), ms(250));
    }
}
