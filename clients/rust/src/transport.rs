//! The seam between the connection driver and the network.
//!
//! The driver ([`crate::Connection`]) needs only two things from the
//! outside world: a way to open a socket (which, for the real service,
//! means a fresh ticket from `POST /v1/connect` and a WebSocket handshake)
//! and a way to read history to fill gaps. [`Transport`] names exactly
//! those; [`HttpTransport`] is the real one. Tests drive the driver with a
//! fake transport and no sockets at all.

use std::time::Duration;

use async_trait::async_trait;
use chat_protocol::Message;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::rest::{enc, HistoryQuery, RestClient};
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
/// tokio-tungstenite.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    rest: RestClient,
    handshake_timeout: Duration,
}

impl HttpTransport {
    pub fn new(rest: RestClient) -> Self {
        HttpTransport {
            rest,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn open(&self) -> Result<Box<dyn Socket>, Error> {
        let ticket = self.rest.connect_ticket().await?;
        let sep = if ticket.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}ticket={}", ticket.url, enc(&ticket.ticket));
        let handshake = tokio_tungstenite::connect_async(url);
        let ws = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Err(_) => {
                return Err(Error::Network {
                    context: format!("opening {}", ticket.url),
                    detail: format!("no handshake within {:?}", self.handshake_timeout),
                })
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                return Err(Error::Handshake {
                    url: ticket.url,
                    status: resp.status().as_u16(),
                })
            }
            Ok(Err(e)) => return Err(Error::network(format!("opening {}", ticket.url), &e)),
            Ok(Ok((ws, _))) => ws,
        };
        Ok(Box::new(WsSocket { ws }))
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<Message>, Error> {
        self.rest.history(room, query).await
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct WsSocket {
    ws: WsStream,
}

#[async_trait]
impl Socket for WsSocket {
    async fn send(&mut self, text: String) -> Result<(), Error> {
        self.ws
            .send(WsMessage::text(text))
            .await
            .map_err(|e| Error::network("writing to the WebSocket", &e))
    }

    async fn recv(&mut self) -> SocketEvent {
        loop {
            // `StreamExt::next` is cancel-safe: a dropped call loses nothing.
            match self.ws.next().await {
                None | Some(Err(_)) => return SocketEvent::Closed(None),
                Some(Ok(WsMessage::Text(t))) => return SocketEvent::Text(t.as_str().to_owned()),
                Some(Ok(WsMessage::Binary(b))) => return SocketEvent::Binary(b.len()),
                Some(Ok(WsMessage::Close(frame))) => {
                    return SocketEvent::Closed(frame.map(|f| u16::from(f.code)))
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}
