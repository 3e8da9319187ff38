//! `connect`: how fast sessions open (`POST /v1/connect` + WebSocket
//! handshake + `welcome`, K in flight), and what an idle session costs the
//! server in resident memory.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::{self, check_fd_limit, error_chain, ErrorLog, WsStream};
use crate::stats::{new_histogram, Summary};
use crate::Ctx;

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// Sessions to open, one user each.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Seconds to keep the sessions open (idle) before closing them.
    #[arg(long, default_value_t = 5.0)]
    pub hold_s: f64,
    /// Server process ids whose VmRSS (summed) is read before connecting and
    /// after the hold: the chat-local process, or the chat servers.
    #[arg(long, env = "CHAT_BENCH_SERVER_PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Rooms each user belongs to (made before the run): a session's
    /// presence is recorded in each of its user's rooms when it opens, so
    /// a connect costs more the more rooms its user is in.
    #[arg(long, default_value_t = 0)]
    pub rooms_per_user: usize,
    /// Members of those rooms: users are taken in groups of this size and
    /// each group shares `--rooms-per-user` rooms.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// After the hold, SIGKILL the chat server with this id (one of
    /// `--server-pid`, found by its `--server-id` argument) and measure
    /// how long until every "offline" event for its users reached the
    /// other members' sessions (the reaping of a dead server), before the
    /// others close. Needs room-mates on several servers: run the API
    /// server with placement by load alone (see the warning it prints).
    #[arg(long)]
    pub kill_server: Option<String>,
}

pub async fn run(ctx: &Ctx, args: ConnectArgs) -> Result<()> {
    let n = args.sessions;
    if n == 0 {
        bail!("--sessions must be at least 1");
    }
    check_fd_limit(n + 64);
    println!(
        "connect: run {} against {}: {n} sessions, {} at a time, hold {} s",
        ctx.run_id, ctx.api_base, args.concurrency, args.hold_s
    );
    let users: Vec<String> = (0..n).map(|i| format!("{}-c{i}", ctx.run_id)).collect();
    let tokens = client::mint_tokens(&ctx.api, &users, ctx.setup_concurrency).await?;
    // Someone to ask the API server about the servers' health, for the kill.
    let observer = tokens.first().map(|t| client::as_user(&ctx.api, t));
    let rooms = make_rooms(ctx, &users, &tokens, args.rooms_per_user, args.room_size).await?;

    let rss = |label: &str| -> Option<u64> {
        if args.server_pid.is_empty() {
            return None;
        }
        match client::rss_kib(&args.server_pid) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("warning: RSS {label}: {e:#}");
                None
            }
        }
    };
    let rss_before = rss("before");

    let cpu_before = client::own_cpu();
    let processes_before = client::group_cpu();
    let started = Instant::now();
    let outcomes = client::run_concurrent(tokens, args.concurrency, |t| {
        let api = ctx.api.clone();
        async move {
            let t0 = Instant::now();
            let r = client::open_session(&api, &t).await;
            (r, t0.elapsed())
        }
    })
    .await;
    let elapsed = started.elapsed();
    // CPU per session opened, by process: where a connect's cost goes.
    let mut cpu = client::name_cpu_delta(&processes_before, &client::group_cpu());
    if let (Some(a), Some(b)) = (cpu_before, client::own_cpu()) {
        cpu.insert("chat-bench", b.since(a));
    }

    let errors = ErrorLog::default();
    let mut latency = new_histogram();
    let mut sessions = Vec::with_capacity(n);
    // Where each user's session is (by user index), for the kill.
    let mut server_of: Vec<Option<String>> = vec![None; n];
    for (i, (r, took)) in outcomes.into_iter().enumerate() {
        match r {
            Ok(s) => {
                let _ = latency.record((took.as_micros() as u64).max(1));
                server_of[i] = Some(s.server_id.clone());
                sessions.push(s);
            }
            Err(e) => errors.note(format!("{e:#}")),
        }
    }
    let ok = sessions.len();
    let failures = n - ok;
    let placement = client::placement(&sessions);
    let per_s = ok as f64 / elapsed.as_secs_f64();
    let lat = Summary::of(&latency);
    println!(
        "  opened {ok} of {n} in {:.2} s: {per_s:.1} sessions/s, failures {failures}",
        elapsed.as_secs_f64()
    );
    println!("  connect+handshake+welcome ms: {}", lat.line_ms());
    // The servers a group of room-mates is spread over, on average.
    let servers_per_room = (args.rooms_per_user > 0).then(|| {
        let groups: Vec<std::collections::BTreeSet<&str>> = server_of
            .chunks(args.room_size.max(1))
            .map(|group| group.iter().flatten().map(String::as_str).collect())
            .collect();
        let spread: usize = groups.iter().map(|servers| servers.len()).sum();
        (spread as f64 / groups.len().max(1) as f64 * 100.0).round() / 100.0
    });
    println!("  placement: {placement:?}, servers per room: {servers_per_room:?}");
    let per_session = |us: u64| (us as f64 / ok.max(1) as f64 * 10.0).round() / 10.0;
    let cpu_per_session: std::collections::BTreeMap<&str, f64> = cpu
        .iter()
        .map(|(name, t)| (*name, per_session(t.total_us())))
        .collect();
    // The part of it in the kernel: TCP setup and teardown, socket reads
    // and writes, whoever runs them.
    let kernel_cpu_per_session: std::collections::BTreeMap<&str, f64> = cpu
        .iter()
        .map(|(name, t)| (*name, per_session(t.system_us)))
        .collect();
    println!("  CPU µs per session opened: {cpu_per_session:?}");
    println!("    of which in the kernel: {kernel_cpu_per_session:?}");
    for e in errors.first() {
        println!("  error: {e}");
    }

    // Hold: a reader per session answers the server's pings and notices
    // drops.
    let closing = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(ErrorLog::default());
    let offline = Arc::new(OfflineEvents::default());
    let mut sinks = Vec::with_capacity(ok);
    let mut readers = Vec::with_capacity(ok);
    for s in sessions {
        let (sink, stream) = s.ws.split();
        // The killed server's sessions end with the kill and count no
        // offline events; the sinks of the others are closed below.
        let killed = args.kill_server.as_ref() == Some(&s.server_id);
        if !killed {
            sinks.push(Arc::new(tokio::sync::Mutex::new(sink)));
        }
        let counted = (args.kill_server.is_some() && !killed).then(|| offline.clone());
        readers.push(tokio::spawn(hold(
            stream,
            closing.clone(),
            dropped.clone(),
            counted,
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold_s.max(0.0))).await;
    let rss_after = rss("after");
    let dropped_during_hold = dropped.count();
    closing.store(true, Relaxed);
    let killed = match &args.kill_server {
        Some(id) => {
            let expected =
                offline_events_expected(&server_of, id, args.room_size, args.rooms_per_user);
            if expected == 0 {
                eprintln!(
                    "warning: no offline event to wait for: no room has members both on {id} and \
                     elsewhere (placement keeps a room's members together; the API server's \
                     CHAT_PLACEMENT_ROOM_AFFINITY_CONNECTIONS=0 and \
                     CHAT_PLACEMENT_ROOM_AFFINITY_SLACK=0 spread them by load)"
                );
            }
            Some(
                kill_and_wait_for_offline(id, &args.server_pid, expected, &offline, observer)
                    .await?,
            )
        }
        None => None,
    };
    // Closing costs too: each session leaves its rooms' presence indexes,
    // and a user's last one announces "offline". The servers do that after
    // the close, so the window runs on until they are idle again.
    let close_before = client::group_cpu();
    // Only the sessions still open close (all but the killed server's).
    let closed = sinks.len();
    client::close_all(sinks).await;
    for r in readers {
        r.abort();
    }
    let close_after = wait_until_idle(Duration::from_secs(30)).await;
    let close_cpu_per_session: std::collections::BTreeMap<&str, f64> =
        client::name_cpu_delta(&close_before, &close_after)
            .iter()
            .map(|(name, t)| {
                let us = t.total_us() as f64 / closed.max(1) as f64;
                (*name, (us * 10.0).round() / 10.0)
            })
            .collect();
    println!("  CPU µs per session closed (and 1 s after): {close_cpu_per_session:?}");

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ok > 0 => Some((a as i64 - b as i64) * 1024 / ok as i64),
        _ => None,
    };
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        println!(
            "  server RSS {} KiB -> {} KiB with {ok} idle sessions: {} bytes per session",
            b,
            a,
            per_conn.unwrap_or(0)
        );
    }
    println!("  sessions dropped by the server during the hold: {dropped_during_hold}");
    for e in dropped.first() {
        println!("  dropped: {e}");
    }
    let result = serde_json::json!({
        "scenario": "connect",
        "run_id": ctx.run_id,
        "sessions": n,
        "concurrency": args.concurrency,
        "rooms_per_user": args.rooms_per_user,
        "rooms": rooms,
        "opened": ok,
        "failures": failures,
        "first_errors": errors.first(),
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "sessions_per_s": (per_s * 10.0).round() / 10.0,
        "connect_latency_us": lat,
        "cpu_us_per_session": cpu_per_session,
        "kernel_cpu_us_per_session": kernel_cpu_per_session,
        "close_cpu_us_per_session": close_cpu_per_session,
        "hold_s": args.hold_s,
        "dropped_during_hold": dropped_during_hold,
        "server_pids": args.server_pid,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_session_bytes": per_conn,
        "servers": placement,
        "servers_per_room": servers_per_room,
        "killed": killed,
    });
    println!("RESULT {}", serde_json::to_string(&result)?);
    Ok(())
}

/// Waits until the servers (and Redis) use less than 4 % of a core over a
/// quarter of a second, or `limit` passed; returns their CPU times then.
async fn wait_until_idle(limit: Duration) -> std::collections::BTreeMap<u32, client::ProcessCpu> {
    const STEP: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let mut last = client::group_cpu();
    loop {
        tokio::time::sleep(STEP).await;
        let now = client::group_cpu();
        let busy_us: u64 = client::name_cpu_delta(&last, &now)
            .values()
            .map(|t| t.total_us())
            .sum();
        if busy_us < STEP.as_micros() as u64 / 25 || started.elapsed() > limit {
            return now;
        }
        last = now;
    }
}

/// Makes `per_user` rooms for each group of `size` consecutive users,
/// created by the group's first user with the rest as members. Returns the
/// number of rooms made.
async fn make_rooms(
    ctx: &Ctx,
    users: &[String],
    tokens: &[String],
    per_user: usize,
    size: usize,
) -> Result<usize> {
    if per_user == 0 {
        return Ok(0);
    }
    let size = size.max(1);
    let rooms: Vec<(usize, usize)> = (0..users.len().div_ceil(size))
        .flat_map(|g| (0..per_user).map(move |k| (g, k)))
        .collect();
    let n = rooms.len();
    println!("connect: making {n} rooms ({per_user} per user, {size} members each)");
    let results = client::run_concurrent(rooms, ctx.setup_concurrency, |(g, k)| {
        let (first, end) = (g * size, ((g + 1) * size).min(users.len()));
        async move {
            client::create_room(
                &ctx.api,
                &tokens[first],
                &format!("connect {g}.{k}"),
                &users[first + 1..end],
                1,
            )
            .await
        }
    })
    .await;
    for r in results {
        r?;
    }
    Ok(n)
}

async fn hold(
    mut stream: WsStream,
    closing: Arc<AtomicBool>,
    dropped: Arc<ErrorLog>,
    offline: Option<Arc<OfflineEvents>>,
) {
    loop {
        let why = match stream.next().await {
            Some(Ok(WsMessage::Close(frame))) => format!("closed: {frame:?}"),
            Some(Ok(WsMessage::Text(text))) => {
                if let Some(offline) = &offline {
                    offline.note(text.as_str());
                }
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => error_chain(e),
            None => "ended".into(),
        };
        if !closing.load(Relaxed) {
            dropped.note(why);
        }
        return;
    }
}

/// "offline" presence events as the surviving sessions receive them.
#[derive(Default)]
struct OfflineEvents {
    arrived: std::sync::Mutex<Vec<Instant>>,
}

impl OfflineEvents {
    fn note(&self, text: &str) {
        let Ok(frame) = serde_json::from_str::<client::Frame>(text) else {
            return;
        };
        if frame.kind == "presence" && frame.online == Some(false) {
            let at = Instant::now();
            self.arrived
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(at);
        }
    }

    fn count(&self) -> usize {
        self.arrived.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The "offline" events owed when `killed` dies: every user there goes
/// offline in each of their rooms, seen by every member with a session
/// elsewhere (users in groups of `room_size` share `rooms_per_user`
/// rooms, as `make_rooms` makes them; one session per user).
fn offline_events_expected(
    server_of: &[Option<String>],
    killed: &str,
    room_size: usize,
    rooms_per_user: usize,
) -> usize {
    server_of
        .chunks(room_size.max(1))
        .map(|group| {
            let dead = group
                .iter()
                .filter(|s| s.as_deref() == Some(killed))
                .count();
            let live = group
                .iter()
                .filter(|s| s.is_some() && s.as_deref() != Some(killed))
                .count();
            dead * live * rooms_per_user
        })
        .sum()
}

/// SIGKILLs the chat server `id` and waits (at most 30 s) until
/// `expected` offline events arrived; reports when they did, from the kill,
/// and how long before the kill the server last reported its health (read
/// from `/v1/servers` by `observer` shortly after): its record expires the
/// dead-after interval after that report, so the server's death can be
/// noticed no sooner, whatever the reapers do.
async fn kill_and_wait_for_offline(
    id: &str,
    pids: &[u32],
    expected: usize,
    offline: &OfflineEvents,
    observer: Option<chat_client::RestClient>,
) -> Result<serde_json::Value> {
    let pid = pids
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
                .unwrap_or(false)
        })
        .ok_or_else(|| anyhow::anyhow!("no --server-pid runs chat server {id}"))?;
    let before = offline.count();
    let killed_at = Instant::now();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    // The API server's view of the servers is at most 250 ms old: half a
    // second after the kill it holds the killed server's last report.
    let last_report = observer.map(|observer| {
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let servers = observer.servers().await.ok()?;
            let last_seen = servers.iter().find(|s| s.id == id)?.last_seen_ms;
            Some(killed_at_ms.saturating_sub(last_seen))
        })
    });
    let limit = Duration::from_secs(30);
    while offline.count() - before < expected && killed_at.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived: Vec<Instant> =
        offline.arrived.lock().unwrap_or_else(|e| e.into_inner())[before..].to_vec();
    let mut delays = new_histogram();
    for at in &arrived {
        let _ = delays.record((at.duration_since(killed_at).as_micros() as u64).max(1));
    }
    let delays = Summary::of(&delays);
    let last_report_before_kill_ms = match last_report {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    println!(
        "  killed {id} (pid {pid}): {} of {expected} offline events arrived; ms after the kill: {}; its last health report {last_report_before_kill_ms:?} ms before the kill",
        arrived.len(),
        delays.line_ms()
    );
    Ok(serde_json::json!({
        "server_id": id,
        "offline_expected": expected,
        "offline_arrived": arrived.len(),
        "offline_delay_us": delays,
        "killed_at_ms": killed_at_ms,
        "last_report_before_kill_ms": last_report_before_kill_ms,
    }))
}
