//! Chat server configuration: flags and `CHAT_*` environment variables.

use std::net::SocketAddr;

use chat_store::StoreArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ChatConfig {
    /// Address for WebSocket clients, the internal link and ops endpoints.
    #[arg(
        long = "listen",
        env = "CHAT_SERVER_LISTEN",
        default_value = "127.0.0.1:9001"
    )]
    pub listen: SocketAddr,
    /// Unique id of this chat server (default: generated).
    #[arg(long, env = "CHAT_SERVER_ID")]
    pub server_id: Option<String>,
    /// WebSocket URL handed to clients (default: ws://<listen>/ws).
    #[arg(long, env = "CHAT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// URL other processes use for the internal link (default: ws://<listen>/internal/link).
    #[arg(long, env = "CHAT_INTERNAL_URL")]
    pub internal_url: Option<String>,
    /// Secret shared with the API servers that signs WebSocket tickets.
    #[arg(long, env = "CHAT_TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: String,
    /// Secret that authenticates internal links.
    #[arg(long, env = "CHAT_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: String,
    /// How often health is reported.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// Lifetime of a health report: silent longer than this means dead.
    #[arg(long, env = "CHAT_DEAD_AFTER_MS", default_value_t = 3000)]
    pub dead_after_ms: u64,
    /// Longest graceful drain after SIGTERM before the process exits.
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Largest `after_ms` in reconnect frames (spreads the reconnect storm).
    #[arg(long, env = "CHAT_RECONNECT_JITTER_MS", default_value_t = 1000)]
    pub reconnect_jitter_ms: u64,
    /// Sessions accepted before the handshake is refused with 503.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Frames queued per session before it counts as a slow consumer.
    #[arg(long, env = "CHAT_SESSION_QUEUE_LEN", default_value_t = 4096)]
    pub session_queue_len: usize,
    /// A write to a client that stays blocked this long (the client stopped
    /// reading) drops it as a slow consumer.
    #[arg(long, env = "CHAT_WRITE_TIMEOUT_MS", default_value_t = 5_000)]
    pub write_timeout_ms: u64,
    /// Lifetime of presence records, refreshed at a third of it.
    #[arg(long, env = "CHAT_PRESENCE_TTL_MS", default_value_t = 60_000)]
    pub presence_ttl_ms: u64,
    /// How long an out-of-order gap waits before it is filled from history.
    #[arg(long, env = "CHAT_GAP_FILL_DELAY_MS", default_value_t = 200)]
    pub gap_fill_delay_ms: u64,
    /// How often the server reads the latest seq of every room its sessions
    /// follow and lets sessions that are behind fill from history: what
    /// catches up a quiet room whose last deliveries were lost (this server
    /// counted dead, a link down, a sender gone between storing and
    /// routing). 0 turns it off. It also runs at once when the server learns
    /// it was counted dead.
    #[arg(long, env = "CHAT_CATCH_UP_INTERVAL_MS", default_value_t = 1000)]
    pub catch_up_interval_ms: u64,
    /// Interval of WebSocket pings to idle clients.
    #[arg(long, env = "CHAT_WS_PING_INTERVAL_MS", default_value_t = 20_000)]
    pub ws_ping_interval_ms: u64,
    /// A client silent (no frame, no pong) for this long is dropped.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// Largest client frame in bytes (contract: 64 KiB; larger closes with 1009).
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,
    /// WebSocket read buffer per connection, in bytes. It is resident for
    /// every session, so it is a large part of an idle session's memory;
    /// frames larger than it still arrive whole (the buffer grows while one
    /// is read). Chat frames are small: 512 bytes hold a send of a few
    /// hundred characters in one read (docs/benchmarks.md, "Idle session
    /// memory": 1.4 KB less per session than 2 KiB, latency the same
    /// within the noise of two sittings).
    #[arg(long, env = "CHAT_WS_READ_BUFFER_BYTES", default_value_t = 512)]
    pub ws_read_buffer_bytes: usize,
    /// Bytes of frames a session collects before it writes them to the
    /// socket: a batch of deliveries goes out in writes of about this size
    /// (one syscall each), the rest on flush. The buffer is freed at that
    /// flush (`chat_ops::batched_writes`), so an idle session keeps none;
    /// tungstenite's own buffer kept its largest size for the connection's
    /// life (docs/benchmarks.md, "Idle sessions in rooms", "A write buffer
    /// freed once written").
    #[arg(long, env = "CHAT_WS_WRITE_BUFFER_BYTES", default_value_t = 1024)]
    pub ws_write_buffer_bytes: usize,
    /// Largest message body in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = 4096)]
    pub max_body_bytes: usize,
    /// Sustained `send` + `typing` frames per second per connection (0: no limit).
    #[arg(long, env = "CHAT_SEND_RATE_PER_S", default_value_t = 50)]
    pub send_rate_per_s: u32,
    /// Frames a connection may send in a burst above the sustained rate.
    #[arg(long, env = "CHAT_SEND_BURST", default_value_t = 100)]
    pub send_burst: u32,
    /// Sustained `send` + `typing` frames per second per user, over all of
    /// the user's sessions in the cluster: a user on `k` chat servers gets
    /// `1/k` of it (and of the burst) on each (0: no limit).
    #[arg(long, env = "CHAT_USER_SEND_RATE_PER_S", default_value_t = 100)]
    pub user_send_rate_per_s: u32,
    /// Burst above the per-user rate.
    #[arg(long, env = "CHAT_USER_SEND_BURST", default_value_t = 200)]
    pub user_send_burst: u32,
    /// WebSocket handshakes per second from one client address; over it
    /// the upgrade is refused with 429 `rate_limited`. 0 (the default): no
    /// limit. Turn it on where chat servers see the clients' own addresses:
    /// behind SNAT or a proxy many clients share one, and a reconnect storm
    /// after a drain would be throttled.
    #[arg(long, env = "CHAT_HANDSHAKES_PER_IP_PER_S", default_value_t = 0)]
    pub handshakes_per_ip_per_s: u32,
    /// Burst of handshakes from one address above that rate.
    #[arg(long, env = "CHAT_HANDSHAKE_BURST_PER_IP", default_value_t = 500)]
    pub handshake_burst_per_ip: u32,
    /// Refusals in a row after which the connection is closed with 1008 (0: never).
    #[arg(long, env = "CHAT_ABUSE_CLOSE_AFTER", default_value_t = 200)]
    pub abuse_close_after: u32,
    /// Browser origins allowed to open WebSockets, comma-separated, as the
    /// API server's `--cors-origins` (exact, `*`, or `http://host:*`). When
    /// set, a handshake with an `Origin` header not on the list gets 403;
    /// one without (not a browser) is not checked. Empty (the default): no
    /// Origin check, the ticket alone admits (a page on another origin
    /// cannot obtain one: `/v1/connect` needs the user's token and CORS).
    #[arg(long, env = "CHAT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    #[command(flatten)]
    pub connections: chat_ops::serve::ConnectionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub fanout: chat_routing::FanoutLimits,
}

impl ChatConfig {
    pub fn server_id(&self) -> String {
        self.server_id
            .clone()
            .unwrap_or_else(|| chat_protocol::ids::new_id("chat-")[..17].to_owned())
    }
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/ws", self.listen))
    }
    pub fn internal_url(&self) -> String {
        self.internal_url
            .clone()
            .unwrap_or_else(|| format!("ws://{}/internal/link", self.listen))
    }
}
