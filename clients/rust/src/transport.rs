//! The seam between the connection driver and the network.
//!
//! The driver ([`crate::Connection`]) needs only two things from the
//! outside world: a way to open a socket (which, for the real service,
//! means a fresh ticket from `POST /v1/connect` and a WebSocket handshake)
//! and a way to read history to fill gaps. [`Transport`] names exactly
//! those; [`HttpTransport`] is the real one. Tests drive the driver with a
//! fake transport and no sockets at all.

use async_trait::async_trait;
use chat_protocol::Message;

use crate::raw::{RawSession, SocketOptions};
use crate::rest::{HistoryQuery, RestClient};
use crate::Error;

/// What reading a socket produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the contract), with its length.
    Binary(usize),
    /// The socket is closed: with the close frame's code, or `None` when it
    /// ended without one (reset, EOF).
    Closed(Option<u16>),
}

/// One open socket. Only the driver task uses it, one call at a time.
#[async_trait]
pub trait Socket: Send {
    /// Writes one text frame.
    async fn send(&mut self, text: String) -> Result<(), Error>;
    /// The next event. Must be cancel-safe: the driver drops a pending
    /// `recv` whenever something else happens first.
    async fn recv(&mut self) -> SocketEvent;
    /// Closes the socket (best effort).
    async fn close(&mut self, code: u16, reason: &str);
}

/// Everything the connection driver needs from the network.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Opens a new socket: for the real service, a fresh ticket from
    /// `POST /v1/connect` and the WebSocket handshake. The driver calls it
    /// for every (re)connection.
    async fn open(&self) -> Result<Box<dyn Socket>, Error>;
    /// A page of a room's history (to fill gaps).
    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<Message>, Error>;
}

/// The real transport: REST for tickets and history, WebSockets through
/// tokio-tungstenite ([`RawSession`]).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    rest: RestClient,
    socket: SocketOptions,
}

impl HttpTransport {
    pub fn new(rest: RestClient) -> Self {
        HttpTransport {
            rest,
            socket: SocketOptions::default(),
        }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn open(&self) -> Result<Box<dyn Socket>, Error> {
        let ticket = self.rest.connect_ticket().await?;
        Ok(Box::new(
            RawSession::open_ticket(&ticket, &self.socket).await?,
        ))
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<Message>, Error> {
        self.rest.history(room, query).await
    }
}

#[async_trait]
impl Socket for RawSession {
    async fn send(&mut self, text: String) -> Result<(), Error> {
        self.send_text(text).await
    }

    async fn recv(&mut self) -> SocketEvent {
        RawSession::recv(self).await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        RawSession::close(self, code, reason).await
    }
}
