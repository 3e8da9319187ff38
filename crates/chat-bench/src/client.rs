//! The client side of the load generator, on `chat-client`: REST calls
//! through one pooled [`RestClient`] shared by every user of the run,
//! sessions opened with [`RawSession`] (a ticket from `POST /v1/connect`,
//! the handshake, the `welcome`) and then driven directly, and a cheap
//! parser for the few fields of server frames the scenarios look at.
//! What is specific to load generation stays here: setup at bounded
//! concurrency, sequence bookkeeping, error tallies.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chat_client::protocol::rest::{CreateRoomRequest, TokenScope};
use chat_client::raw::{RawSession, SocketOptions};
use chat_client::{RestClient, RestOptions, StaticToken};
use futures_util::stream::{self, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub type Ws = chat_client::raw::WebSocket;
pub type WsSink = SplitSink<Ws, WsMessage>;
pub type WsStream = SplitStream<Ws>;

/// How long one setup step (REST call, handshake, welcome) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The REST client every user of the run shares (one connection pool,
/// `pool` idle connections kept: the setup calls in flight at once).
pub fn rest_client(api: &str, pool: usize) -> Result<RestClient> {
    let options = RestOptions {
        request_timeout: STEP_TIMEOUT,
        pool_max_idle_per_host: pool.max(1),
    };
    RestClient::anonymous(api, &options).context("the API server URL")
}

/// `rest` acting as the holder of `token`.
pub fn as_user(rest: &RestClient, token: &str) -> RestClient {
    rest.with_tokens(StaticToken::new(token))
}

/// An open WebSocket session, after its `welcome`.
pub struct Session {
    pub ws: Ws,
    pub server_id: String,
}

/// `POST /v1/connect`, the WebSocket handshake with the ticket, and the
/// `welcome` frame.
pub async fn open_session(rest: &RestClient, token: &str) -> Result<Session> {
    let ticket = as_user(rest, token).connect_ticket().await?;
    let options = SocketOptions {
        handshake_timeout: STEP_TIMEOUT,
        // Small read buffers: thousands of connections each receive small
        // frames, and tungstenite zero-fills the whole buffer before every
        // read (at 16 KiB that was 4 % of the machine in a big-room run).
        read_buffer_size: Some(4 * 1024),
    };
    let mut session = RawSession::open_ticket(&ticket, &options).await?;
    let welcome = session
        .read_welcome(STEP_TIMEOUT)
        .await
        .with_context(|| format!("session on {}", ticket.url))?;
    Ok(Session {
        ws: session.into_inner(),
        server_id: welcome.server_id,
    })
}

/// The fields of a server frame the scenarios need, borrowed from the frame
/// text where possible. Everything else is skipped by serde.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, borrow)]
    pub body: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub online: Option<bool>,
}

/// The `send` frame.
#[derive(Serialize)]
pub struct SendFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
}

impl<'a> SendFrame<'a> {
    pub fn new(room: &'a str, body: &'a str) -> Self {
        SendFrame {
            kind: "send",
            room,
            body,
            client_msg_id: None,
        }
    }

    pub fn to_message(&self) -> WsMessage {
        WsMessage::text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// Duplicate / order bookkeeping for one room on one connection: the
/// highest seq seen and a bitmap of the 64 seqs below it.
#[derive(Default, Clone, Copy)]
pub struct SeqWindow {
    last: u64,
    bits: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next seq, or a later one (`gap` seqs skipped).
    InOrder { gap: u64 },
    /// A seq already seen on this connection.
    Duplicate,
    /// An earlier seq not seen before (or too old to tell).
    OutOfOrder,
}

impl SeqWindow {
    pub fn observe(&mut self, seq: u64) -> SeqVerdict {
        if seq > self.last {
            let shift = seq - self.last;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.last = seq;
            SeqVerdict::InOrder { gap: shift - 1 }
        } else {
            let d = self.last - seq;
            if d < 64 {
                if self.bits & (1 << d) != 0 {
                    return SeqVerdict::Duplicate;
                }
                self.bits |= 1 << d;
            }
            SeqVerdict::OutOfOrder
        }
    }
}

/// Errors worth showing: counted, the first few kept verbatim.
#[derive(Default)]
pub struct ErrorLog {
    count: std::sync::atomic::AtomicU64,
    first: Mutex<Vec<String>>,
    fd_hint: AtomicBool,
}

impl ErrorLog {
    pub const KEEP: usize = 5;

    pub fn note(&self, what: impl Into<String>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let what = what.into();
        if is_fd_exhaustion(&what) && !self.fd_hint.swap(true, Ordering::Relaxed) {
            eprintln!("{FD_HINT}");
        }
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < Self::KEEP {
            first.push(what);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub const FD_HINT: &str = "hint: \"Too many open files\": raise the file descriptor limit \
(e.g. `ulimit -n 65536`) in the shell that starts chat-bench and in the one that starts the servers";

pub fn is_fd_exhaustion(text: &str) -> bool {
    text.contains("Too many open files") || text.contains("os error 24")
}

/// Warns when the soft fd limit is below what the run needs.
pub fn check_fd_limit(needed: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let Some(soft) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if soft < needed {
        eprintln!(
            "warning: the open-file limit is {soft} but this run needs about {needed} descriptors; \
             raise it with `ulimit -n {}` (here and for the servers)",
            needed.next_power_of_two().max(65536)
        );
    }
}

/// An error and its sources on one line (the OS error is usually a source).
pub fn error_chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

/// A short random id that prefixes every user and room name of one run.
pub fn new_run_id() -> String {
    format!("b{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Runs `f` over `items` with at most `concurrency` in flight, keeping the
/// input order in the output.
pub async fn run_concurrent<I, T, F, Fut>(items: Vec<I>, concurrency: usize, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let n = items.len();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut results = stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let fut = f(item);
            async move { (i, fut.await) }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|x| x.expect("every item ran"))
        .collect()
}

/// Mints a development token for every user; fails on the first error.
pub async fn mint_tokens(
    rest: &RestClient,
    users: &[String],
    concurrency: usize,
) -> Result<Vec<String>> {
    let started = Instant::now();
    let results = run_concurrent(users.to_vec(), concurrency, |u| async move {
        let answer = rest.dev_token(&u, TokenScope::User).await?;
        Ok(answer.token)
    })
    .await;
    let tokens = collect_all(results, "minting tokens")?;
    eprintln!(
        "setup: {} tokens in {:.1} s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(tokens)
}

/// Creates a room owned by `creator` holding `others` too. The contract
/// caps the initial member list, so large rooms are created with a first
/// slice and completed with `PUT .../members/{user}`.
pub async fn create_room(
    rest: &RestClient,
    creator_token: &str,
    name: &str,
    others: &[String],
    concurrency: usize,
) -> Result<String> {
    const INITIAL: usize = 500;
    let creator = as_user(rest, creator_token);
    let (first, later) = others.split_at(others.len().min(INITIAL));
    let room = creator
        .create_room(&CreateRoomRequest {
            name: name.into(),
            members: Some(first.to_vec()),
            created_by: None,
        })
        .await?;
    let results = run_concurrent(later.to_vec(), concurrency, |u| {
        let (creator, room) = (&creator, &room.id);
        async move {
            creator
                .add_member(room, &u)
                .await
                .map_err(anyhow::Error::from)
        }
    })
    .await;
    collect_all(results, "adding room members")?;
    Ok(room.id)
}

/// Opens one session per token, `concurrency` at a time. Fails (with the
/// first errors) unless every session opened.
pub async fn connect_all(
    rest: &RestClient,
    tokens: &[String],
    concurrency: usize,
) -> Result<Vec<Session>> {
    let started = Instant::now();
    let results = run_concurrent(tokens.to_vec(), concurrency, |t| async move {
        open_session(rest, &t).await
    })
    .await;
    let sessions = collect_all(results, "connecting sessions")?;
    eprintln!(
        "setup: {} sessions connected in {:.1} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sessions)
}

fn collect_all<T>(results: Vec<Result<T>>, what: &str) -> Result<Vec<T>> {
    let total = results.len();
    let mut ok = Vec::with_capacity(total);
    let mut errors = Vec::new();
    let mut failed = 0usize;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                failed += 1;
                if errors.len() < ErrorLog::KEEP {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    if failed > 0 {
        if errors.iter().any(|e| is_fd_exhaustion(e)) {
            eprintln!("{FD_HINT}");
        }
        bail!(
            "{what}: {failed} of {total} failed; first errors:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(ok)
}

/// Sessions per chat server, from their welcomes.
pub fn placement(sessions: &[Session]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in sessions {
        *out.entry(s.server_id.clone()).or_insert(0) += 1;
    }
    out
}

/// Sends a close frame on every sink (bounded in time), so the servers see
/// clean departures rather than resets.
pub async fn close_all(sinks: Vec<Arc<tokio::sync::Mutex<WsSink>>>) {
    let closing = stream::iter(sinks)
        .map(|sink| async move {
            let mut sink = sink.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        })
        .buffer_unordered(256)
        .for_each(|_| async {});
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
}

/// CPU time a process has used, split into user space and the kernel
/// (system calls, and on loopback most of the TCP receive path too, which
/// runs in the sender's system call). The split tells a cost we can cut in
/// our code from one each socket write pays whoever does it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_us: u64,
    pub system_us: u64,
}

impl CpuTime {
    pub fn total_us(self) -> u64 {
        self.user_us + self.system_us
    }

    /// The time used since `earlier` (a reading of the same process).
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
        }
    }

    fn add(&mut self, other: CpuTime) {
        self.user_us += other.user_us;
        self.system_us += other.system_us;
    }
}

/// CPU time this process has used, from /proc/self/stat (clock ticks,
/// normally 10 ms each). `None` off Linux.
pub fn own_cpu() -> Option<CpuTime> {
    cpu_of("self")
}

/// CPU time of `/proc/<pid>`.
fn cpu_of(pid: &str) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI we run on.
    Some(CpuTime {
        user_us: utime * 10_000,
        system_us: stime * 10_000,
    })
}

/// The processes whose CPU a step accounts for, by what they are: our
/// servers (`api-server`, `chat-server`, `chat-local`), Redis
/// (`redis-server`) and the peer (`node`).
pub const CPU_GROUPS: &[(&str, &[&str])] = &[
    ("app", &["api-server", "chat-server", "chat-local"]),
    ("redis", &["redis-server"]),
    ("peer", &["node"]),
];

/// CPU time of every process on this machine in one of [`CPU_GROUPS`],
/// keyed by pid, with its group and its name. Processes that start or end
/// during a step count for the part they were alive (a pid seen only at
/// the end counts from 0, so start servers before the step).
pub fn group_cpu() -> std::collections::BTreeMap<u32, ProcessCpu> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim();
        let Some((group, name)) = CPU_GROUPS.iter().find_map(|(group, names)| {
            names
                .iter()
                .find(|name| **name == comm)
                .map(|name| (*group, *name))
        }) else {
            continue;
        };
        if let Some(cpu) = cpu_of(&pid.to_string()) {
            out.insert(pid, ProcessCpu { group, name, cpu });
        }
    }
    out
}

/// One process's CPU time so far, as [`group_cpu`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessCpu {
    pub group: &'static str,
    /// Its name in [`CPU_GROUPS`] (`api-server`, `chat-server`, ...).
    pub name: &'static str,
    pub cpu: CpuTime,
}

/// CPU time per group between two [`group_cpu`] readings.
pub fn group_cpu_delta(
    before: &std::collections::BTreeMap<u32, ProcessCpu>,
    after: &std::collections::BTreeMap<u32, ProcessCpu>,
) -> std::collections::BTreeMap<&'static str, CpuTime> {
    cpu_delta_by(before, after, |p| p.group)
}

/// CPU time per process name (all chat servers together, ...) between two
/// [`group_cpu`] readings.
pub fn name_cpu_delta(
    before: &std::collections::BTreeMap<u32, ProcessCpu>,
    after: &std::collections::BTreeMap<u32, ProcessCpu>,
) -> std::collections::BTreeMap<&'static str, CpuTime> {
    cpu_delta_by(before, after, |p| p.name)
}

fn cpu_delta_by(
    before: &std::collections::BTreeMap<u32, ProcessCpu>,
    after: &std::collections::BTreeMap<u32, ProcessCpu>,
    key: impl Fn(&ProcessCpu) -> &'static str,
) -> std::collections::BTreeMap<&'static str, CpuTime> {
    let mut out = std::collections::BTreeMap::new();
    for (pid, process) in after {
        let was = before.get(pid).map_or(CpuTime::default(), |p| p.cpu);
        out.entry(key(process))
            .or_insert_with(CpuTime::default)
            .add(process.cpu.since(was));
    }
    out
}

/// Resident set size in KiB of each pid, summed, from /proc/PID/status.
pub fn rss_kib(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
        total += kib;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_classifies_duplicates_gaps_and_reordering() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(1), SeqVerdict::InOrder { gap: 0 });
        assert_eq!(w.observe(2), SeqVerdict::InOrder { gap: 0 });
        assert_eq!(w.observe(2), SeqVerdict::Duplicate);
        assert_eq!(w.observe(5), SeqVerdict::InOrder { gap: 2 });
        assert_eq!(w.observe(3), SeqVerdict::OutOfOrder);
        assert_eq!(w.observe(3), SeqVerdict::Duplicate);
        assert_eq!(w.observe(1), SeqVerdict::Duplicate);
        assert_eq!(w.observe(200), SeqVerdict::InOrder { gap: 194 });
        assert_eq!(w.observe(5), SeqVerdict::OutOfOrder);
    }

    #[test]
    fn frames_parse_borrowing_the_needed_fields() {
        let text = r#"{"type":"message","room":"r_1","seq":7,"id":"m","from":"a","body":"0.12.3","ts":1,"client_msg_id":null}"#;
        let f: Frame = serde_json::from_str(text).unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.room.as_deref(), Some("r_1"));
        assert_eq!(f.seq, Some(7));
        assert_eq!(f.body.as_deref(), Some("0.12.3"));
        let f: Frame = serde_json::from_str(
            r#"{"type":"ack","client_msg_id":null,"room":"r","seq":1,"id":"m"}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "ack");
    }

    #[test]
    fn own_cpu_time_is_read_and_grows() {
        let before = own_cpu().expect("/proc/self/stat is readable on Linux");
        let mut x = 0u64;
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = own_cpu().unwrap();
        assert!(after.user_us >= before.user_us && after.system_us >= before.system_us);
        assert!(after.since(before).total_us() == after.total_us() - before.total_us());
    }
}
