//! Rust client of the chat service: the whole client contract
//! (`shared/PROTOCOL.md`, v1.1) with the reliability work done for you.
//!
//! - **REST** ([`RestClient`]): rooms, members, history, read state,
//!   servers, and the service-token calls (`created_by`, `from`,
//!   [`RestClient::rooms_of_user`]). The token comes from a
//!   [`TokenProvider`], asked again after a 401.
//! - **A connection that stays up** ([`Connection`]): a fresh ticket from
//!   `POST /v1/connect` for every (re)connection; reconnects with
//!   exponential backoff and full jitter, after `after_ms` when the server
//!   sends `reconnect`, and promptly after close 1012; a silent connection
//!   (no answer to a ping) or an unacknowledged send is replaced.
//! - **Messages once, in order.** Every tracked room keeps the last seq
//!   handed to the application; each reconnection resumes all of them from
//!   there. Duplicates are dropped by seq; early messages wait until the gap
//!   closes, and a gap still open after
//!   [`ConnectionConfig::gap_fill_delay`] is fetched from REST history.
//! - **Sends stored once.** [`ConnectionHandle::send`] generates a
//!   `client_msg_id` once and repeats it on every retry (after a reconnect,
//!   `unavailable`, a timeout, `rate_limited`, which also pauses all sends)
//!   until the `ack` arrives. `forbidden` and `invalid_request` fail with
//!   [`Error::SendRefused`]. [`RestClient::publish`] does the same over REST.
//! - **Bad input stays out.** Arguments are checked against the contract's
//!   limits before anything is sent; malformed frames from the server are
//!   reported as [`Event::ProtocolError`] and skipped, never a panic.
//!
//! Wire types are those of the `chat-protocol` crate, re-exported as
//! [`protocol`].
//!
//! # Quick start
//!
//! ```no_run
//! use chat_client::{ChatClient, DevTokens, Event};
//!
//! # async fn run() -> Result<(), chat_client::Error> {
//! let api = "http://127.0.0.1:8080";
//! // Development tokens (the local mode); production apps pass their own
//! // TokenProvider, or a StaticToken.
//! let client = ChatClient::new(api, DevTokens::user(api, "alice"))?;
//! let room = client.rest().create_room_named("general", &["bob"]).await?;
//!
//! let mut conn = client.connect().await?;        // stays connected until closed
//! conn.track(&room.id, Some(room.last_seq))?;    // deliver what comes after this
//! let ack = conn.send(&room.id, "hi bob").await?; // resolves once stored
//! println!("stored as seq {}", ack.seq);
//!
//! while let Some(event) = conn.next_event().await {
//!     match event {
//!         Event::Message(m) => println!("{} {}: {}", m.seq, m.from, m.body),
//!         Event::Stopped(e) => return Err(e),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! The parts that decide things are pure and tested without sockets:
//! [`room_cursors`] (ordering, dedup, gaps), [`outbox`] (sends until
//! acknowledged), [`backoff`]. [`Connection`] drives them over a
//! [`Transport`]: [`HttpTransport`] in production, a fake in tests.
//!
//! Tools that need the wire itself (test harnesses, load generators) use
//! [`raw::RawSession`] and [`RestClient::request_raw`]: the same sockets and
//! requests with nothing done for them.

pub mod backoff;
mod connection;
mod error;
pub mod outbox;
pub mod raw;
mod rest;
pub mod room_cursors;
mod token;
pub mod transport;
mod validate;

use std::sync::Arc;
use std::time::Duration;

pub use chat_protocol as protocol;
pub use chat_protocol::rest::{
    ConnectResponse, CreateRoomRequest, Member, MemberRead, ReadMarker, Room, ServerInfo,
    ServerState, TokenResponse, TokenScope,
};
pub use chat_protocol::Message;

pub use backoff::BackoffConfig;
pub use connection::{
    Connection, ConnectionConfig, ConnectionHandle, ConnectionState, Event, FrameProblem, SendAck,
    SessionInfo,
};
pub use error::{Error, ErrorKind};
pub use rest::{dev_token, new_client_msg_id, HistoryQuery, RawAnswer, RestClient, RestOptions};
pub use token::{jwt_expiry, jwt_subject, token_fn, DevTokens, StaticToken, TokenProvider};
pub use transport::{HttpTransport, Socket, SocketEvent, Transport};

/// The client: REST calls, and [`connect`](ChatClient::connect) for a live
/// connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChatClient {
    rest: RestClient,
    config: ConnectionConfig,
}

impl ChatClient {
    /// A client of the API server at `api_url` with default settings.
    ///
    /// ```
    /// let client = chat_client::ChatClient::new(
    ///     "http://127.0.0.1:8080",
    ///     chat_client::StaticToken::new("eyJ..."),
    /// ).unwrap();
    /// assert_eq!(client.rest().api_url(), "http://127.0.0.1:8080");
    /// ```
    pub fn new(api_url: &str, tokens: impl TokenProvider) -> Result<ChatClient, Error> {
        Self::builder(api_url, tokens).build()
    }

    /// A builder, for timeouts and connection settings.
    pub fn builder(api_url: &str, tokens: impl TokenProvider) -> ChatClientBuilder {
        ChatClientBuilder {
            api_url: api_url.to_owned(),
            tokens: Arc::new(tokens),
            request_timeout: rest::DEFAULT_REQUEST_TIMEOUT,
            config: ConnectionConfig::default(),
        }
    }

    /// The REST calls.
    pub fn rest(&self) -> &RestClient {
        &self.rest
    }

    /// Opens a connection and waits for its first welcome. The connection
    /// then stays up (reconnecting by itself) until closed. Fails only for
    /// what retrying cannot fix (a refused token, a service token), or with
    /// the first attempt's error when [`ConnectionConfig::fail_fast`] is set.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let transport = Arc::new(HttpTransport::new(self.rest.clone()));
        Connection::open(transport, self.config.clone()).await
    }
}

/// Builds a [`ChatClient`].
pub struct ChatClientBuilder {
    api_url: String,
    tokens: Arc<dyn TokenProvider>,
    request_timeout: Duration,
    config: ConnectionConfig,
}

impl ChatClientBuilder {
    /// Longest single REST request (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Settings of the connections [`ChatClient::connect`] opens.
    pub fn connection(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    pub fn build(self) -> Result<ChatClient, Error> {
        let options = rest::RestOptions {
            request_timeout: self.request_timeout,
            ..Default::default()
        };
        Ok(ChatClient {
            rest: RestClient::with_options(&self.api_url, self.tokens, &options)?,
            config: self.config,
        })
    }
}

impl RestClient {
    /// `POST /v1/rooms` with a name and members (the common case of
    /// [`RestClient::create_room`]).
    pub async fn create_room_named(&self, name: &str, members: &[&str]) -> Result<Room, Error> {
        self.create_room(&CreateRoomRequest {
            name: name.to_owned(),
            members: Some(members.iter().map(|m| m.to_string()).collect()),
            created_by: None,
        })
        .await
    }
}
