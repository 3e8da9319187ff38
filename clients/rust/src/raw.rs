//! One WebSocket session, nothing done for you: no reconnect, no resume, no
//! retries, frames as the server wrote them.
//!
//! Applications want [`crate::Connection`]. This is for tools that need the
//! wire itself: test harnesses that check what the server sends (and that
//! send what no well-behaved client would), and load generators that parse
//! frames their own way. [`crate::Connection`] is built on it too.
//!
//! ```no_run
//! use chat_client::raw::{RawSession, SocketOptions};
//! use chat_client::{RestClient, SocketEvent, StaticToken};
//!
//! # async fn run() -> Result<(), chat_client::Error> {
//! let rest = RestClient::new("http://127.0.0.1:8080", StaticToken::new("eyJ..."))?;
//! let ticket = rest.connect_ticket().await?;
//! let mut session = RawSession::open_ticket(&ticket, &SocketOptions::default()).await?;
//! let welcome = session.read_welcome(std::time::Duration::from_secs(10)).await?;
//! println!("on {} as {}", welcome.server_id, welcome.user);
//! session.send_text(r#"{"type":"ping","nonce":1}"#).await?;
//! if let SocketEvent::Text(pong) = session.recv().await {
//!     println!("{pong}");
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use chat_protocol::rest::ConnectResponse;
use chat_protocol::{ClientFrame, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::connection::SessionInfo;
use crate::rest::{enc, snippet};
use crate::transport::SocketEvent;
use crate::Error;

/// The WebSocket stream of a session, for callers that drive it themselves
/// (split it into a sink and a stream, say).
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a session's socket is opened.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Longest TCP connect plus WebSocket handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Read buffer per socket (default 8 KiB; `None`: tungstenite's, 128
    /// KiB). Larger frames still arrive whole: the buffer grows for them.
    /// Kept small because tungstenite zero-fills the whole buffer before
    /// every read, including the one that finds nothing after each frame,
    /// and because it is held per session.
    pub read_buffer_size: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            handshake_timeout: Duration::from_secs(10),
            read_buffer_size: Some(8 * 1024),
        }
    }
}

/// The URL to open for a `/v1/connect` answer: its `url` with the
/// `ticket` added as a query parameter.
pub fn ticket_url(url: &str, ticket: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}ticket={}", enc(ticket))
}

/// One open WebSocket session.
pub struct RawSession {
    ws: WebSocket,
    /// Why the socket ended without a close frame, once it has.
    end_reason: Option<String>,
}

impl std::fmt::Debug for RawSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSession")
            .field("end_reason", &self.end_reason)
            .finish_non_exhaustive()
    }
}

impl RawSession {
    /// Opens the WebSocket at `url` (which must carry its ticket) and reads
    /// nothing. A refused upgrade is [`Error::Handshake`] with its status.
    pub async fn open(url: &str, options: &SocketOptions) -> Result<RawSession, Error> {
        let mut config = WebSocketConfig::default();
        if let Some(size) = options.read_buffer_size {
            config = config.read_buffer_size(size);
        }
        let handshake = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        // The ticket is a credential: errors name the URL without it.
        let shown = url.split('?').next().unwrap_or(url);
        match tokio::time::timeout(options.handshake_timeout, handshake).await {
            Err(_) => Err(Error::Network {
                context: format!("opening {shown}"),
                detail: format!("no handshake within {:?}", options.handshake_timeout),
            }),
            Ok(Err(tungstenite::Error::Http(resp))) => Err(Error::Handshake {
                url: shown.to_owned(),
                status: resp.status().as_u16(),
            }),
            Ok(Err(e)) => Err(Error::network(format!("opening {shown}"), &e)),
            Ok(Ok((ws, _))) => Ok(RawSession {
                ws,
                end_reason: None,
            }),
        }
    }

    /// Opens the session a `/v1/connect` answer names.
    pub async fn open_ticket(
        ticket: &ConnectResponse,
        options: &SocketOptions,
    ) -> Result<RawSession, Error> {
        Self::open(&ticket_url(&ticket.url, &ticket.ticket), options).await
    }

    /// Reads the first frame, which must be the `welcome`.
    pub async fn read_welcome(&mut self, timeout: Duration) -> Result<SessionInfo, Error> {
        let context = "waiting for the welcome";
        let text = match tokio::time::timeout(timeout, self.recv()).await {
            Err(_) => {
                return Err(Error::Network {
                    context: context.into(),
                    detail: format!("no frame within {timeout:?}"),
                })
            }
            Ok(SocketEvent::Text(text)) => text,
            Ok(SocketEvent::Binary(len)) => {
                return Err(Error::protocol(
                    context,
                    format!("a binary frame ({len} bytes)"),
                ))
            }
            Ok(SocketEvent::Closed(code)) => {
                return Err(Error::Network {
                    context: context.into(),
                    detail: format!(
                        "the connection closed first (code {}{})",
                        code.map_or("none".to_string(), |c| c.to_string()),
                        self.end_reason
                            .as_deref()
                            .map(|r| format!(", {r}"))
                            .unwrap_or_default()
                    ),
                })
            }
        };
        match serde_json::from_str::<ServerFrame>(&text) {
            Ok(ServerFrame::Welcome {
                server_id,
                user,
                session,
            }) => Ok(SessionInfo {
                server_id,
                user,
                session,
            }),
            Ok(ServerFrame::Error { code, message, .. }) => Err(Error::Server { code, message }),
            _ => Err(Error::protocol(
                context,
                format!("the first frame is not a welcome: {}", snippet(&text)),
            )),
        }
    }

    /// Writes one text frame, as is.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), Error> {
        self.ws
            .send(WsMessage::text(text.into()))
            .await
            .map_err(|e| Error::network("writing to the WebSocket", &e))
    }

    /// Writes one client frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        let text = serde_json::to_string(frame)
            .map_err(|e| Error::protocol("encoding a frame", e.to_string()))?;
        self.send_text(text).await
    }

    /// The next event. Cancel-safe: a dropped call loses nothing. WebSocket
    /// pings are answered by the library and not reported. Once closed, every
    /// call answers `Closed` again.
    pub async fn recv(&mut self) -> SocketEvent {
        loop {
            match self.ws.next().await {
                None => {
                    self.end_reason
                        .get_or_insert_with(|| "the stream ended without a close frame".into());
                    return SocketEvent::Closed(None);
                }
                Some(Err(e)) => {
                    self.end_reason.get_or_insert_with(|| e.to_string());
                    return SocketEvent::Closed(None);
                }
                Some(Ok(WsMessage::Text(t))) => return SocketEvent::Text(t.as_str().to_owned()),
                Some(Ok(WsMessage::Binary(b))) => return SocketEvent::Binary(b.len()),
                Some(Ok(WsMessage::Close(frame))) => {
                    return SocketEvent::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Why the socket ended without a close frame (a reset, EOF), if it did.
    pub fn end_reason(&self) -> Option<&str> {
        self.end_reason.as_deref()
    }

    /// Sends a close frame with `code` and `reason` (best effort).
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }

    /// The WebSocket stream, for callers that drive it themselves.
    pub fn into_inner(self) -> WebSocket {
        self.ws
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticket_goes_in_the_query_encoded() {
        assert_eq!(
            ticket_url("ws://h:9001/ws", "a.b+c/d="),
            "ws://h:9001/ws?ticket=a.b%2Bc%2Fd%3D"
        );
        assert_eq!(
            ticket_url("ws://h/ws?zone=a", "t"),
            "ws://h/ws?zone=a&ticket=t"
        );
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_its_status_and_hides_the_ticket() {
        // A plain HTTP server that answers every request with 401.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let url = format!("ws://{addr}/ws?ticket=secret");
        let e = RawSession::open(&url, &SocketOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
