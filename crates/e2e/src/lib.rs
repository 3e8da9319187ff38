//! Harness for the end-to-end tests in `tests/*.rs`.
//!
//! The tests start the real `api-server` and `chat-server` binaries (built
//! beforehand with `cargo build --workspace --bins`) against a real Redis
//! Cluster named by `CHAT_TEST_REDIS_URLS`, and talk to them only through the
//! public client contract (`shared/PROTOCOL.md`): REST with a bearer token and
//! WebSockets opened with tickets from `/v1/connect`, both through the
//! workspace's client crate, `chat-client` ([`chat_client::RestClient`]'s
//! `request_raw` and [`chat_client::raw::RawSession`]). Answers and frames
//! are kept as raw JSON, because these tests check the wire. What is here is
//! specific to the tests: processes, fault injection, waiting helpers.
//!
//! Every test process shares the one Redis Cluster, so every test uses its
//! own user names ([`unique`]) and its own rooms, and a test that cares about
//! which chat server a client lands on only accepts the servers of its own
//! [`Cluster`] (see [`Api::allowed_servers`]).
//!
//! Timeouts in here only turn a hang into a failure; no test asserts on how
//! fast something happens.
//!
//! Running them:
//!
//! ```text
//! scripts/redis-cluster.sh start
//! cargo build --workspace --bins
//! CHAT_TEST_REDIS_URLS=$(scripts/redis-cluster.sh urls) CHAT_TEST_REQUIRE_REDIS=1 \
//!     cargo test -p e2e -- --test-threads=2
//! ```
//!
//! Without `CHAT_TEST_REDIS_URLS` the multi-process tests print a notice and
//! pass without doing anything. Process output goes to
//! `target/e2e-logs/<binary>-<port>.log`; a failing test prints the tail of
//! each of its processes' logs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_client::protocol::rest::TokenScope;
use chat_client::raw::{RawSession, SocketOptions};
use chat_client::{RestClient, SocketEvent, StaticToken};
use serde_json::{json, Value};

pub mod partition;
pub mod redis_node;

pub use chat_client;
pub use partition::{Partitions, ServerUids};
pub use redis_node::{cluster_is_whole, RedisNode};
pub use serde_json;

/// Secrets every process of a test cluster shares. The tests know them too,
/// so they can mint tokens and tickets of their own (expired, forged...).
pub const JWT_SECRET: &str = "e2e-jwt-secret-do-not-use-in-production";
pub const TICKET_SECRET: &str = "e2e-ticket-secret-do-not-use-in-production";
pub const INTERNAL_SECRET: &str = "e2e-internal-secret-do-not-use-in-production";

/// The default bound on any single wait; generous on purpose.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long startup (process up, registered with the API server) may take.
pub const STARTUP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Paths, ports, names, environment
// ---------------------------------------------------------------------------

/// `<workspace root>`, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `$CARGO_TARGET_DIR` or `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_relative() {
                workspace_root().join(dir)
            } else {
                dir
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A workspace binary in `<target>/debug/`. Panics if it was not built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    if !path.is_file() {
        panic!(
            "binary {} does not exist: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    path
}

/// A port that was free a moment ago (bind to port 0, drop the listener).
/// Callers retry with a new port if the process then fails to bind it.
///
/// Never the same port twice in one test process: the kernel may hand a
/// just-released port out again at once, and two servers spawned one after
/// the other would then share it. The second one's bind fails, but its
/// `/readyz` wait is answered by the first, so it passes for started
/// (seen in CI: `kubernetes_mode`, two chat servers on one port).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Whether `CHAT_TEST_REQUIRE_REDIS=1`: a test that would skip for want of
/// the Redis Cluster fails instead.
pub fn redis_required() -> bool {
    std::env::var("CHAT_TEST_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// The Redis Cluster URLs for the test processes, from
/// `CHAT_TEST_REDIS_URLS`. `None` (after printing a notice) when unset,
/// unless `CHAT_TEST_REQUIRE_REDIS=1`, which turns the skip into a panic.
pub fn redis_urls() -> Option<String> {
    match std::env::var("CHAT_TEST_REDIS_URLS") {
        Ok(urls) if !urls.trim().is_empty() => Some(urls.trim().to_owned()),
        _ => {
            if redis_required() {
                panic!(
                    "CHAT_TEST_REQUIRE_REDIS=1 but CHAT_TEST_REDIS_URLS is unset: start a cluster with \
                     `scripts/redis-cluster.sh start` and set \
                     CHAT_TEST_REDIS_URLS=$(scripts/redis-cluster.sh urls)"
                );
            }
            println!("skipped: CHAT_TEST_REDIS_URLS is unset");
            eprintln!("skipped: CHAT_TEST_REDIS_URLS is unset");
            None
        }
    }
}

/// `<prefix>-<12 hex digits>`, different in every call and every process:
/// user names and server ids that parallel tests sharing one Redis never
/// collide on. Valid as a user id when the prefix is.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

/// `GET <http_url>/metrics`, then [`metric_value`]; `None` if either fails.
pub async fn scrape_metric(http_url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{http_url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_value(&text, name)
}

/// Polls `f` every 250 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process with its output in `target/e2e-logs/<name>-<port>.log`.
/// Killed (SIGKILL) when dropped; prints the tail of its log when dropped
/// during a panic, i.e. when the test fails.
pub struct Process {
    pub name: String,
    pub pid: u32,
    pub port: u16,
    pub log_path: PathBuf,
    child: tokio::process::Child,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `bin` with `args` and `env` on top of this process's
    /// environment minus every inherited `CHAT_*` variable.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        port: u16,
    ) -> Process {
        Self::spawn_as(name, bin, args, env, port, None)
    }

    /// [`Process::spawn`], as user id `uid` when given (so that
    /// [`Partitions`] can cut it off; needs root).
    pub fn spawn_as(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        port: u16,
        uid: Option<u32>,
    ) -> Process {
        let dir = target_dir().join("e2e-logs");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let log_path = dir.join(format!("{name}-{port}.log"));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("cloning the log file handle");
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CHAT_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let pid = child.id().expect("a just-started child has a pid");
        println!(
            "[e2e] started {name} (pid {pid}, port {port}): {} {}; log {}",
            bin.display(),
            args.join(" "),
            log_path.display()
        );
        Process {
            name: name.to_owned(),
            pid,
            port,
            log_path,
            child,
            exit: None,
        }
    }

    fn signal(&self, sig: &str) {
        if self.exit.is_some() {
            return;
        }
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("running kill");
        if !status.success() {
            println!(
                "[e2e] kill -{sig} {} ({}) failed: {status}",
                self.pid, self.name
            );
        }
    }

    /// Sends SIGSTOP: the process freezes (a long GC pause, a starved pod,
    /// a paused VM) with its sockets open.
    pub fn freeze(&self) {
        println!("[e2e] SIGSTOP {} (pid {})", self.name, self.pid);
        self.signal("STOP");
    }

    /// Sends SIGCONT: a frozen process runs again.
    pub fn thaw(&self) {
        println!("[e2e] SIGCONT {} (pid {})", self.name, self.pid);
        self.signal("CONT");
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        println!("[e2e] SIGTERM {} (pid {})", self.name, self.pid);
        self.signal("TERM");
    }

    /// Sends SIGKILL (a crash) and reaps the process.
    pub async fn sigkill(&mut self) {
        println!("[e2e] SIGKILL {} (pid {})", self.name, self.pid);
        self.signal("KILL");
        let status = self.wait_exit(WAIT).await;
        assert!(status.is_some(), "{} did not die after SIGKILL", self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                Some(status)
            }
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => None,
        }
    }

    /// The exit status if the process has exited already.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} (pid {}, port {}, {}) -----\n{}\n----- end of {} -----",
                self.name,
                self.pid,
                self.port,
                self.log_path.display(),
                self.log_tail(40),
                self.name
            );
        }
    }
}

/// Placement by load alone, for the suite's API servers (and chat-local's).
/// By default placement puts a client on the server where its rooms
/// already have online members, and the tests put members where their
/// scenario needs them (`WsClient::connect_to`, `connect_avoiding`: two
/// members of a room on two servers, say), which retries would not reach.
/// `room_mates_are_placed_beside_each_other` runs an API server with the
/// default placement.
pub const PLACEMENT_BY_LOAD: [(&str, &str); 2] = [
    ("CHAT_PLACEMENT_ROOM_AFFINITY_CONNECTIONS", "0"),
    ("CHAT_PLACEMENT_ROOM_AFFINITY_SLACK", "0"),
];

pub fn process_env(redis_urls: &str) -> Vec<(String, String)> {
    [
        ("CHAT_REDIS_URLS", redis_urls),
        ("CHAT_JWT_SECRET", JWT_SECRET),
        ("CHAT_TICKET_SECRET", TICKET_SECRET),
        ("CHAT_INTERNAL_SECRET", INTERNAL_SECRET),
        ("RUST_LOG", "info"),
        ("NO_COLOR", "1"),
    ]
    .into_iter()
    .chain(PLACEMENT_BY_LOAD)
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Waits until `GET url` answers 200. `Err` if the process exited first
/// (typically: the port was taken meanwhile).
pub async fn wait_http_ok(
    process: &mut Process,
    url: &str,
    timeout: Duration,
) -> Result<(), ExitStatus> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building the HTTP client");
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        if let Some(status) = process.try_exit() {
            return Err(status);
        }
        match client.get(url).send().await {
            Ok(r) if r.status().as_u16() == 200 => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            panic!(
                "{} (pid {}) did not answer 200 on {url} within {timeout:?} (last: {last}); log tail:\n{}",
                process.name,
                process.pid,
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an api-server on a free port and waits for its `/readyz`.
pub async fn start_api(redis_urls: &str) -> (Process, String) {
    start_api_as(redis_urls, None).await
}

/// [`start_api`], as user id `uid` when given (see [`Partitions`]).
pub async fn start_api_as(redis_urls: &str, uid: Option<u32>) -> (Process, String) {
    start_api_retrying(&process_env(redis_urls), &dev_tokens_args(), uid).await
}

/// Starts an api-server with `env` and `args` (besides `--listen` on a
/// free port) and waits for its `/readyz`, retrying on another port if it
/// dies at startup.
pub async fn start_api_with(env: &[(String, String)], args: &[String]) -> (Process, String) {
    start_api_retrying(env, args, None).await
}

async fn start_api_retrying(
    env: &[(String, String)],
    args: &[String],
    uid: Option<u32>,
) -> (Process, String) {
    for attempt in 1..=3 {
        let port = free_port();
        match spawn_api(env, args, port, uid).await {
            Ok(p) => return (p, format!("http://127.0.0.1:{port}")),
            Err(log) => println!(
                "[e2e] api-server exited during startup (attempt {attempt}); log tail:\n{log}"
            ),
        }
    }
    panic!("api-server failed to start three times");
}

/// Starts an API server on `port` (the port of one that was killed, say,
/// so that its clients find the new one), as user id `uid` when given, and
/// waits until it is ready. `Err` with its log tail if it exited first.
pub async fn start_api_on_as(
    redis_urls: &str,
    port: u16,
    uid: Option<u32>,
) -> Result<Process, String> {
    spawn_api(&process_env(redis_urls), &dev_tokens_args(), port, uid).await
}

fn dev_tokens_args() -> Vec<String> {
    vec!["--dev-tokens".to_owned()]
}

/// The chat server counter of gaps filled from history: a delivery that
/// arrived by the catch-up or a gap fill instead of live.
pub const GAP_FILLS_METRIC: &str = "chat_server_gap_fills_total";

async fn spawn_api(
    env: &[(String, String)],
    args: &[String],
    port: u16,
    uid: Option<u32>,
) -> Result<Process, String> {
    let mut all_args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
    all_args.extend_from_slice(args);
    let bin = bin_path("api-server");
    let mut p = Process::spawn_as("api-server", &bin, &all_args, env, port, uid);
    let url = format!("http://127.0.0.1:{port}");
    match wait_http_ok(&mut p, &format!("{url}/readyz"), STARTUP).await {
        Ok(()) => Ok(p),
        Err(status) => Err(format!("{status}\n{}", p.log_tail(20))),
    }
}

/// A chat-server process of a [`Cluster`].
pub struct ChatServer {
    pub process: Process,
    pub port: u16,
    pub id: String,
    pub args: Vec<String>,
    /// The user id it runs as, in a partitionable cluster.
    pub uid: Option<u32>,
}

impl ChatServer {
    /// The public WebSocket URL (without ticket).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn spawn_chat(redis_urls: &str, id: &str, extra: &[String], uid: Option<u32>) -> ChatServer {
    spawn_chat_on(redis_urls, id, extra, uid, free_port())
}

fn spawn_chat_on(
    redis_urls: &str,
    id: &str,
    extra: &[String],
    uid: Option<u32>,
    port: u16,
) -> ChatServer {
    let mut args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--server-id".to_owned(),
        id.to_owned(),
    ];
    args.extend(extra.iter().cloned());
    let process = Process::spawn_as(
        "chat-server",
        &bin_path("chat-server"),
        &args,
        &process_env(redis_urls),
        port,
        uid,
    );
    ChatServer {
        process,
        port,
        id: id.to_owned(),
        args: extra.to_vec(),
        uid,
    }
}

/// Starts a chat-server (retrying on another port if it dies at startup)
/// and waits for its `/readyz`.
pub async fn start_chat(redis_urls: &str, id: &str, extra: &[String]) -> ChatServer {
    start_chat_as(redis_urls, id, extra, None).await
}

/// [`start_chat`], as user id `uid` when given.
pub async fn start_chat_as(
    redis_urls: &str,
    id: &str,
    extra: &[String],
    uid: Option<u32>,
) -> ChatServer {
    let mut server = spawn_chat(redis_urls, id, extra, uid);
    for attempt in 1..=3 {
        let url = format!("{}/readyz", server.http_url());
        match wait_http_ok(&mut server.process, &url, STARTUP).await {
            Ok(()) => return server,
            Err(status) => {
                println!(
                    "[e2e] chat-server {id} exited during startup (attempt {attempt}, {status}); log tail:\n{}",
                    server.process.log_tail(20)
                );
                server = spawn_chat(redis_urls, id, extra, uid);
            }
        }
    }
    panic!("chat-server {id} failed to start three times");
}

/// The local mode (`chat-local`: an API server and two chat servers on
/// the in-memory store, no Redis) on free ports.
pub struct LocalSystem {
    pub process: Process,
    pub api_url: String,
    pub chat_ids: Vec<String>,
}

impl LocalSystem {
    /// Starts `chat-local` with `extra` flags and waits until the API lists
    /// both chat servers as ready.
    pub async fn start(extra: &[&str]) -> LocalSystem {
        let api_port = free_port();
        let chat_ports = [free_port(), free_port()];
        let mut args = vec![
            "--api-port".to_owned(),
            api_port.to_string(),
            "--chat-ports".to_owned(),
            format!("{},{}", chat_ports[0], chat_ports[1]),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = PLACEMENT_BY_LOAD
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let process = Process::spawn("chat-local", &bin_path("chat-local"), &args, &env, api_port);
        let api_url = format!("http://127.0.0.1:{api_port}");
        let chat_ids = eventually(STARTUP, "chat-local to list two ready chat servers", || {
            let api_url = api_url.clone();
            async move {
                let token = chat_client::dev_token(&api_url, "admin", TokenScope::User)
                    .await
                    .ok()?;
                let admin = Api::with_token(&api_url, "admin", &token.token);
                let servers = admin.servers().await["servers"].as_array()?.clone();
                let ready = servers.len() == 2 && servers.iter().all(|s| s["state"] == "ready");
                ready.then(|| {
                    servers
                        .iter()
                        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                })
            }
        })
        .await;
        LocalSystem {
            process,
            api_url,
            chat_ids,
        }
    }
}

/// One api-server and `n` chat-servers sharing the test Redis Cluster.
pub struct Cluster {
    pub api: Process,
    pub api_url: String,
    /// The user ids its servers run as, in a partitionable cluster.
    pub uids: Option<ServerUids>,
    pub chat: Vec<ChatServer>,
    pub redis_urls: String,
    /// Prefix of this cluster's server ids (random).
    pub prefix: String,
    admin: Option<Api>,
}

impl Cluster {
    /// Starts the cluster and waits until the API server lists all its chat
    /// servers as ready. `None` (after printing a notice) when no Redis
    /// Cluster is configured; see [`redis_urls`].
    pub async fn start(n_chat_servers: usize, chat_args: &[&str]) -> Option<Cluster> {
        Self::start_opts(n_chat_servers, chat_args, false).await
    }

    /// [`Cluster::start`] with every server running as a user id of its
    /// own ([`ServerUids`]), so that [`Partitions`] can cut one off. Needs
    /// root.
    pub async fn start_partitionable(n_chat_servers: usize, chat_args: &[&str]) -> Option<Cluster> {
        Self::start_opts(n_chat_servers, chat_args, true).await
    }

    async fn start_opts(
        n_chat_servers: usize,
        chat_args: &[&str],
        own_users: bool,
    ) -> Option<Cluster> {
        let redis_urls = redis_urls()?;
        let prefix = unique("e2e");
        let uids = own_users.then(ServerUids::new);
        let (api, api_url) = start_api_as(&redis_urls, uids.map(|u| u.api())).await;
        let mut cluster = Cluster {
            api,
            api_url,
            uids,
            chat: Vec::new(),
            redis_urls,
            prefix,
            admin: None,
        };
        cluster.admin = Some(Api::login(&cluster.api_url, &unique("admin")).await);
        let extra: Vec<String> = chat_args.iter().map(|s| s.to_string()).collect();
        // Spawn all first so they start up in parallel, then wait for each.
        let mut spawned = Vec::new();
        for i in 0..n_chat_servers {
            let id = format!("{}-chat-{i}", cluster.prefix);
            let uid = uids.map(|u| u.chat(i));
            spawned.push(spawn_chat(&cluster.redis_urls, &id, &extra, uid));
        }
        for mut server in spawned {
            let url = format!("{}/readyz", server.http_url());
            if wait_http_ok(&mut server.process, &url, STARTUP)
                .await
                .is_err()
            {
                println!(
                    "[e2e] chat-server {} exited during startup; log tail:\n{}",
                    server.id,
                    server.process.log_tail(20)
                );
                server = start_chat_as(&cluster.redis_urls, &server.id, &extra, server.uid).await;
            }
            cluster.chat.push(server);
        }
        let ids = cluster.ids();
        cluster.wait_servers_ready(&ids).await;
        Some(cluster)
    }

    /// Adds one more chat server (with its own id) and waits until it is
    /// listed as ready. Returns its index in `chat`.
    pub async fn add_chat_server(&mut self, chat_args: &[&str]) -> usize {
        let id = format!("{}-chat-{}", self.prefix, self.chat.len());
        let extra: Vec<String> = chat_args.iter().map(|s| s.to_string()).collect();
        let uid = self.uids.map(|u| u.chat(self.chat.len()));
        let server = start_chat_as(&self.redis_urls, &id, &extra, uid).await;
        self.chat.push(server);
        self.wait_servers_ready(&[id]).await;
        self.chat.len() - 1
    }

    /// Kills chat server `index` (SIGKILL) and starts a new process with
    /// the same id on the same port, so that its public and internal URLs
    /// are the old ones (a pod restarted in place); waits until it is
    /// ready.
    pub async fn restart_chat_in_place(&mut self, index: usize) {
        let old = &mut self.chat[index];
        old.process.sigkill().await;
        let (id, args, uid, port) = (old.id.clone(), old.args.clone(), old.uid, old.port);
        let mut server = spawn_chat_on(&self.redis_urls, &id, &args, uid, port);
        let url = format!("{}/readyz", server.http_url());
        if let Err(status) = wait_http_ok(&mut server.process, &url, STARTUP).await {
            panic!(
                "chat-server {id} did not restart on port {port} ({status}):\n{}",
                server.process.log_tail(20)
            );
        }
        self.chat[index] = server;
        self.wait_servers_ready(&[id]).await;
    }

    /// Ids of this cluster's chat servers (including stopped ones).
    pub fn ids(&self) -> Vec<String> {
        self.chat.iter().map(|c| c.id.clone()).collect()
    }

    /// The user id its API servers run as, in a partitionable cluster.
    pub fn api_uid(&self) -> Option<u32> {
        self.uids.map(|u| u.api())
    }

    pub fn chat_index(&self, id: &str) -> usize {
        self.chat
            .iter()
            .position(|c| c.id == id)
            .unwrap_or_else(|| panic!("{id} is not a chat server of this cluster"))
    }

    /// A logged-in client for `user` that only accepts this cluster's chat
    /// servers when connecting.
    pub async fn api(&self, user: &str) -> Api {
        let mut api = Api::login(&self.api_url, user).await;
        api.allowed_servers = Some(self.ids());
        api
    }

    fn admin(&self) -> &Api {
        self.admin.as_ref().expect("admin client")
    }

    /// `GET /v1/servers` (the `servers` array).
    pub async fn servers(&self) -> Vec<Value> {
        self.admin().servers().await["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `/v1/servers` lists every id in `ids` as ready.
    pub async fn wait_servers_ready(&self, ids: &[String]) {
        let admin = self.admin().clone();
        let ids = ids.to_vec();
        eventually(
            STARTUP,
            &format!("/v1/servers to list {ids:?} as ready"),
            || {
                let admin = admin.clone();
                let ids = ids.clone();
                async move {
                    let v = admin.servers().await;
                    let servers = v["servers"].as_array()?;
                    ids.iter()
                        .all(|id| {
                            servers
                                .iter()
                                .any(|s| s["id"] == id.as_str() && s["state"] == "ready")
                        })
                        .then_some(())
                }
            },
        )
        .await
    }

    /// Waits until `/v1/servers` lists exactly `ids` (no leftovers of
    /// earlier tests, whose entries expire a few seconds after they die).
    pub async fn wait_servers_exactly(&self, ids: &[String]) {
        let admin = self.admin().clone();
        let mut want = ids.to_vec();
        want.sort();
        eventually(
            Duration::from_secs(30),
            &format!("/v1/servers to list exactly {want:?}"),
            || {
                let admin = admin.clone();
                let want = want.clone();
                async move {
                    let v = admin.servers().await;
                    let mut got: Vec<String> = v["servers"]
                        .as_array()?
                        .iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_owned))
                        .collect();
                    got.sort();
                    (got == want).then_some(())
                }
            },
        )
        .await
    }

    /// Stops the API server (SIGTERM, must exit) and starts a new one on
    /// another port with the same store.
    pub async fn restart_api(&mut self) {
        self.api.sigterm();
        let status = self.api.wait_exit(WAIT).await;
        assert!(status.is_some(), "api-server did not exit after SIGTERM");
        let (api, url) = start_api_as(&self.redis_urls, self.api_uid()).await;
        self.api = api;
        self.api_url = url;
        self.admin = Some(self.admin().at(&self.api_url));
    }
}

// ---------------------------------------------------------------------------
// REST, through chat-client
// ---------------------------------------------------------------------------

/// A request outside the contract (a malformed `Authorization` header, no
/// header at all): sent as given with plain reqwest. Returns the status and
/// the body as JSON (`Null` when empty, a JSON string when not JSON).
/// Requests inside the contract go through [`Api`].
pub async fn http_call(
    method: reqwest::Method,
    url: &str,
    authorization: Option<&str>,
    body: Option<(Vec<u8>, &str)>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method.clone(), url);
    if let Some(auth) = authorization {
        req = req.header("authorization", auth);
    }
    if let Some((bytes, content_type)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    (status, json_of(&bytes))
}

/// A body as JSON: `Null` when empty, a JSON string when not JSON (so a
/// test can show it).
fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// `POST /v1/auth/token` for `user` (development tokens).
pub async fn token(api_url: &str, user: &str) -> String {
    let answer = chat_client::dev_token(api_url, user, TokenScope::User)
        .await
        .unwrap_or_else(|e| panic!("POST /v1/auth/token for {user}: {e}"));
    assert_eq!(answer.user, user, "token for another user: {answer:?}");
    answer.token
}

/// A service token (`scope: service`) for `name` (development tokens).
pub async fn service_token(api_url: &str, name: &str) -> String {
    let answer = chat_client::dev_token(api_url, name, TokenScope::Service)
        .await
        .unwrap_or_else(|e| panic!("POST /v1/auth/token for service {name}: {e}"));
    assert_eq!(answer.scope, TokenScope::Service, "{answer:?}");
    answer.token
}

/// One caller's REST calls, on [`chat_client::RestClient`]. Answers are kept
/// raw (status and JSON) because the tests check the wire: a typed client
/// would hide a field the contract requires.
#[derive(Clone)]
pub struct Api {
    /// `rest.api_url()` is the API server (`http://127.0.0.1:PORT`);
    /// [`Api::at`] makes a client of another one.
    pub rest: RestClient,
    pub token: String,
    pub user: String,
    /// When set, [`WsClient::connect`] and friends retry `/v1/connect`
    /// until it names one of these servers (the test's own cluster).
    pub allowed_servers: Option<Vec<String>>,
}

impl Api {
    pub async fn login(base: &str, user: &str) -> Api {
        let token = token(base, user).await;
        Api::with_token(base, user, &token)
    }

    pub fn with_token(base: &str, user: &str, token: &str) -> Api {
        let rest = RestClient::new(base, StaticToken::new(token))
            .unwrap_or_else(|e| panic!("a REST client of {base}: {e}"));
        Api {
            rest,
            token: token.to_owned(),
            user: user.to_owned(),
            allowed_servers: None,
        }
    }

    /// The same caller against another API server.
    pub fn at(&self, base: &str) -> Api {
        Api {
            rest: self
                .rest
                .with_api_url(base)
                .unwrap_or_else(|e| panic!("a REST client of {base}: {e}")),
            ..self.clone()
        }
    }

    /// A request with this user's token and an optional JSON body; `Err`
    /// only when no answer came (the server is down).
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), chat_client::Error> {
        let body = body.map(|b| (b.to_string().into_bytes(), "application/json"));
        let answer = self.rest.request_raw(method, path, body).await?;
        Ok((answer.status, json_of(&answer.body)))
    }

    /// A request with this user's token and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} as {}: {e}", self.user))
    }

    /// A request with this user's token and a raw body.
    pub async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> (u16, Value) {
        let answer = self
            .rest
            .request_raw(method.clone(), path, Some((body, content_type)))
            .await
            .unwrap_or_else(|e| panic!("{method} {path} as {}: {e}", self.user));
        (answer.status, json_of(&answer.body))
    }

    /// `POST /v1/rooms`, raw answer.
    pub async fn try_create_room(&self, name: &str, members: &[&str]) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/rooms",
            Some(&json!({ "name": name, "members": members })),
        )
        .await
    }

    /// `POST /v1/rooms`, must answer 201; returns the Room.
    pub async fn create_room(&self, name: &str, members: &[&str]) -> Value {
        let (status, body) = self.try_create_room(name, members).await;
        assert_eq!(status, 201, "POST /v1/rooms as {}: {body}", self.user);
        assert!(body["id"].is_string(), "room without id: {body}");
        body
    }

    /// `POST /v1/rooms` and return only the id.
    pub async fn create_room_id(&self, name: &str, members: &[&str]) -> String {
        self.create_room(name, members).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn get_room(&self, room: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, &format!("/v1/rooms/{room}"), None)
            .await
    }

    pub async fn rooms(&self) -> (u16, Value) {
        self.call(reqwest::Method::GET, "/v1/rooms", None).await
    }

    pub async fn members(&self, room: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/rooms/{room}/members"),
            None,
        )
        .await
    }

    /// `PUT /v1/rooms/{room}/members/{user}`, raw answer.
    pub async fn add_member(&self, room: &str, user: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/rooms/{room}/members/{user}"),
            None,
        )
        .await
    }

    /// `DELETE /v1/rooms/{room}/members/{user}`, raw answer.
    pub async fn remove_member(&self, room: &str, user: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/rooms/{room}/members/{user}"),
            None,
        )
        .await
    }

    /// `POST /v1/rooms/{room}/messages`, raw answer.
    pub async fn post_message(
        &self,
        room: &str,
        body: &str,
        client_msg_id: Option<&str>,
    ) -> (u16, Value) {
        let mut req = json!({ "body": body });
        if let Some(id) = client_msg_id {
            req["client_msg_id"] = json!(id);
        }
        self.call(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(&req),
        )
        .await
    }

    /// `POST /v1/rooms/{room}/messages`, must answer 201; returns the Message.
    pub async fn send(&self, room: &str, body: &str) -> Value {
        let (status, msg) = self.post_message(room, body, None).await;
        assert_eq!(status, 201, "POST message as {}: {msg}", self.user);
        msg
    }

    /// `GET /v1/rooms/{room}/messages?{query}`, raw answer.
    pub async fn history(&self, room: &str, query: &str) -> (u16, Value) {
        let path = if query.is_empty() {
            format!("/v1/rooms/{room}/messages")
        } else {
            format!("/v1/rooms/{room}/messages?{query}")
        };
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// The room's first 200 messages (`after=0&limit=200`), must answer 200.
    pub async fn all_messages(&self, room: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (status, body) = self
                .history(room, &format!("after={after}&limit=200"))
                .await;
            assert_eq!(status, 200, "history of {room} as {}: {body}", self.user);
            let page = body["messages"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| panic!("no messages array: {body}"));
            match page.last() {
                Some(last) => after = last["seq"].as_u64().expect("seq"),
                None => return all,
            }
            all.extend(page);
        }
    }

    /// `POST /v1/connect`, raw answer.
    pub async fn connect(&self) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/connect", None).await
    }

    /// `GET /v1/servers`, must answer 200.
    pub async fn servers(&self) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, "/v1/servers", None).await;
        assert_eq!(status, 200, "GET /v1/servers: {body}");
        body
    }
}

/// Seqs of message values (frames or history entries), in order.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {m}")))
        .collect()
}

/// The fields of a Message, without the frame's `type`: to compare a
/// delivered frame with a history entry.
pub fn message_fields(m: &Value) -> Value {
    json!({
        "room": m["room"], "seq": m["seq"], "id": m["id"], "from": m["from"],
        "body": m["body"], "ts": m["ts"], "client_msg_id": m["client_msg_id"],
    })
}

/// The body of a REST answer that must be 200 OK: two answers compared
/// without their status could be the same error twice.
#[track_caller]
pub fn ok_body(answer: (u16, Value), what: &str) -> Value {
    let (status, body) = answer;
    assert_eq!(
        status, 200,
        "{what}: expected HTTP 200, got {status}: {body}"
    );
    body
}

/// The user ids listed by a `GET /v1/rooms/{room}/members` answer.
pub fn member_ids(members: &Value) -> std::collections::BTreeSet<String> {
    members["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array in {members}"))
        .iter()
        .map(|m| {
            m["user"]
                .as_str()
                .unwrap_or_else(|| panic!("member without user in {members}"))
                .to_owned()
        })
        .collect()
}

/// Asserts a REST error answer: status and `{"error":{"code","message"}}`.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, code: &str, what: &str) {
    let (s, body) = got;
    assert_eq!(
        *s, status,
        "{what}: expected HTTP {status} {code}, got {s}: {body}"
    );
    assert_eq!(body["error"]["code"], code, "{what}: error code in {body}");
    assert!(
        body["error"]["message"].is_string(),
        "{what}: error message missing in {body}"
    );
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

/// Why a WebSocket could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade request with this HTTP status.
    Status(u16),
    Other(String),
}

/// Opens a WebSocket (through [`RawSession`]) without reading anything.
pub async fn ws_open(url: &str) -> Result<RawSession, OpenError> {
    let options = SocketOptions {
        handshake_timeout: WAIT,
        ..SocketOptions::default()
    };
    RawSession::open(url, &options).await.map_err(|e| match e {
        chat_client::Error::Handshake { status, .. } => OpenError::Status(status),
        other => OpenError::Other(other.to_string()),
    })
}

pub use chat_client::raw::ticket_url;

/// What reading a WebSocket produced.
#[derive(Debug, Clone)]
pub enum Event {
    Frame(Value),
    /// The connection ended: with the close frame's code, or `None` when it
    /// ended without a close frame (reset, EOF).
    Closed(Option<u16>),
    Timeout,
}

/// A client WebSocket session, opened through `/v1/connect`.
pub struct WsClient {
    ws: RawSession,
    pub welcome: Value,
    pub server_id: String,
    pub session: String,
    pub user: String,
    closed: bool,
    close_code: Option<u16>,
    /// Why the connection ended without a close frame, if it did.
    pub close_error: Option<String>,
}

impl WsClient {
    /// `/v1/connect` then open the WebSocket; accepts only the api's
    /// `allowed_servers` (retrying `/v1/connect` otherwise).
    pub async fn connect(api: &Api) -> WsClient {
        Self::connect_where(api, |_| true).await
    }

    /// Retries `/v1/connect` until it places this user on `server_id`.
    pub async fn connect_to(api: &Api, server_id: &str) -> WsClient {
        Self::connect_where(api, |s| s == server_id).await
    }

    /// Retries `/v1/connect` until it places this user elsewhere than on
    /// `server_id`.
    pub async fn connect_avoiding(api: &Api, server_id: &str) -> WsClient {
        Self::connect_where(api, |s| s != server_id).await
    }

    /// Retries `/v1/connect` (and the WebSocket open) until it places this
    /// user on an allowed server satisfying `accept`.
    pub async fn connect_where(api: &Api, accept: impl Fn(&str) -> bool) -> WsClient {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last;
        loop {
            let (status, body) = api.connect().await;
            if status == 200 {
                let server_id = body["server_id"].as_str().unwrap_or_default().to_owned();
                let allowed = api
                    .allowed_servers
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&server_id));
                if allowed && accept(&server_id) {
                    let url = body["url"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no url in /v1/connect answer {body}"));
                    let ticket = body["ticket"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no ticket in /v1/connect answer {body}"));
                    match Self::open(&ticket_url(url, ticket)).await {
                        Ok(client) => {
                            assert_eq!(
                                client.server_id, server_id,
                                "welcome names another server than /v1/connect did: {}",
                                client.welcome
                            );
                            assert_eq!(
                                client.user, api.user,
                                "welcome names another user: {}",
                                client.welcome
                            );
                            return client;
                        }
                        Err(e) => last = format!("opening {url} for {}: {e:?}", api.user),
                    }
                } else {
                    last = format!(
                        "/v1/connect placed {} on {server_id}, not wanted here",
                        api.user
                    );
                }
            } else if status == 503 {
                last = format!("/v1/connect: 503 {body}");
            } else {
                panic!("/v1/connect as {}: {status} {body}", api.user);
            }
            if Instant::now() >= deadline {
                panic!(
                    "could not connect {} as wanted within 30 s; last: {last}",
                    api.user
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` (which carries the ticket) and reads the welcome frame.
    pub async fn open(url: &str) -> Result<WsClient, OpenError> {
        let ws = ws_open(url).await?;
        let mut client = WsClient {
            ws,
            welcome: Value::Null,
            server_id: String::new(),
            session: String::new(),
            user: String::new(),
            closed: false,
            close_code: None,
            close_error: None,
        };
        match client.next_event(WAIT).await {
            Event::Frame(v) if v["type"] == "welcome" => {
                client.server_id = v["server_id"].as_str().unwrap_or_default().to_owned();
                client.session = v["session"].as_str().unwrap_or_default().to_owned();
                client.user = v["user"].as_str().unwrap_or_default().to_owned();
                assert!(
                    !client.server_id.is_empty()
                        && !client.session.is_empty()
                        && !client.user.is_empty(),
                    "incomplete welcome frame: {v}"
                );
                client.welcome = v;
                Ok(client)
            }
            Event::Frame(v) => panic!("first frame is not a welcome: {v}"),
            other => Err(OpenError::Other(format!(
                "no welcome frame: {other:?} ({:?})",
                client.close_error
            ))),
        }
    }

    /// Sends a text frame; `Err` if the connection is gone.
    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.ws.send_text(text).await.map_err(|e| e.to_string())
    }

    /// Sends one JSON frame; panics if the connection is gone.
    pub async fn send_json(&mut self, frame: Value) {
        if let Err(e) = self.send_text(frame.to_string()).await {
            panic!("sending {frame} as {}: {e}", self.user);
        }
    }

    /// `{"type":"send", ...}`
    pub async fn send_message(&mut self, room: &str, body: &str, client_msg_id: Option<&str>) {
        let mut frame = json!({ "type": "send", "room": room, "body": body });
        if let Some(id) = client_msg_id {
            frame["client_msg_id"] = json!(id);
        }
        self.send_json(frame).await;
    }

    /// The next thing that happens on the connection, within `timeout`.
    /// WebSocket-level pings and pongs are handled by the library and not
    /// reported.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        if self.closed {
            return Event::Closed(self.close_code);
        }
        if timeout.is_zero() {
            return Event::Timeout;
        }
        match tokio::time::timeout(timeout, self.ws.recv()).await {
            Err(_) => Event::Timeout,
            Ok(SocketEvent::Text(text)) => Event::Frame(
                serde_json::from_str(&text)
                    .unwrap_or_else(|_| json!({ "type": "_not_json", "text": text })),
            ),
            Ok(SocketEvent::Binary(len)) => Event::Frame(json!({ "type": "_binary", "len": len })),
            Ok(SocketEvent::Closed(code)) => {
                self.closed = true;
                self.close_code = code;
                self.close_error = self.ws.end_reason().map(str::to_owned);
                Event::Closed(code)
            }
        }
    }

    /// The next frame; `None` on timeout or when the connection ended.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout).await {
            Event::Frame(v) => Some(v),
            _ => None,
        }
    }

    /// Reads frames until one satisfies `want`; returns the frames before it
    /// and the matching one (`None` on timeout or close).
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, Option<Value>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_event(remaining).await {
                Event::Frame(v) if want(&v) => return (before, Some(v)),
                Event::Frame(v) => before.push(v),
                _ => return (before, None),
            }
        }
    }

    /// Reads frames until `done(frames so far)` holds. Panics (showing the
    /// frames) if that does not happen within `timeout`.
    pub async fn read_frames_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        while !done(&frames) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_event(remaining).await {
                Event::Frame(v) => frames.push(v),
                other => panic!(
                    "{} on {}: waiting for {what}: {other:?} ({:?}); frames so far: {frames:?}",
                    self.user, self.server_id, self.close_error
                ),
            }
        }
        frames
    }

    /// The next frame of type `ty`, discarding others.
    pub async fn next_of_type(&mut self, ty: &str, timeout: Duration) -> Option<Value> {
        self.read_until(timeout, |v| v["type"] == ty).await.1
    }

    /// Collects `message` frames of `room` until `n` have arrived (or the
    /// timeout passed or the connection ended), discarding other frames.
    pub async fn collect_messages(
        &mut self,
        room: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_event(remaining).await {
                Event::Frame(v) => {
                    if v["type"] == "message" && v["room"] == room {
                        out.push(v);
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// Every frame received during `duration` (for absence checks).
    pub async fn frames_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_event(remaining).await {
                Event::Frame(v) => out.push(v),
                _ => return out,
            }
        }
    }

    /// Sends a ping with `nonce` and returns the frames that arrived before
    /// the matching pong. Panics if no pong comes.
    pub async fn ping(&mut self, nonce: Value) -> Vec<Value> {
        self.send_json(json!({ "type": "ping", "nonce": nonce.clone() }))
            .await;
        let (before, pong) = self
            .read_until(WAIT, |v| v["type"] == "pong" && v["nonce"] == nonce)
            .await;
        assert!(
            pong.is_some(),
            "no pong for nonce {nonce} (frames: {before:?}, close: {:?} {:?})",
            self.close_code,
            self.close_error
        );
        before
    }

    /// Reads until the connection ends; returns the frames before that and
    /// the close code (`None`: ended without a close frame). Panics if the
    /// connection is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> (Vec<Value>, Option<u16>) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.next_event(remaining).await {
                Event::Frame(v) => frames.push(v),
                Event::Closed(code) => return (frames, code),
                Event::Timeout => panic!(
                    "connection of {} to {} still open after {timeout:?}; frames: {frames:?}",
                    self.user, self.server_id
                ),
            }
        }
    }

    /// The close code the connection ends with (see [`Self::wait_closed`]).
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        self.wait_closed(timeout).await.1
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the connection from the client side (normal closure) and
    /// waits briefly for the server's close.
    pub async fn close(mut self) {
        if self.closed {
            return;
        }
        self.ws.close(1000, "").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !matches!(self.ws.recv().await, SocketEvent::Closed(_)) {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let port = super::free_port();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
}
