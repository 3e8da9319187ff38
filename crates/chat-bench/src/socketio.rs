//! The Socket.IO peer's wire format, for `fanout --protocol socketio`:
//! Engine.IO v4 over a plain WebSocket (no HTTP long-polling first) and
//! Socket.IO v5 packets on the main namespace.
//!
//! - open `ws://host:port/socket.io/?EIO=4&transport=websocket`
//! - the server's first frame is the Engine.IO open packet `0{"sid":..,
//!   "pingInterval":..,"pingTimeout":..,"maxPayload":..}`
//! - we connect to the namespace with `40{"user":..,"rooms":[..]}` (the
//!   auth payload), the server answers `40{"sid":..}` (or `44{..}` refused)
//! - the server pings with `2`, we answer `3` (see [`PING`], [`PONG`])
//! - events are `42["name",payload]`: we emit `send` {room, body}, the
//!   server emits `message` {room, from, body}.
//!
//! The peer (`bench/socketio/server.js`) stores nothing and sequences
//! nothing, so there is no seq and no ack: loss, duplicates and order are
//! checked from the per-sender counter in the body instead.

use std::borrow::Cow;

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::client::{error_chain, truncate, Ws, STEP_TIMEOUT};

/// Engine.IO ping (server -> client) and pong (client -> server).
pub const PING: &str = "2";
pub const PONG: &str = "3";

/// The WebSocket URL of an Engine.IO v4 endpoint from a base URL such as
/// `http://127.0.0.1:9101` or `ws://127.0.0.1:9101`.
pub fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        format!("ws://{base}")
    };
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

#[derive(Serialize)]
struct Auth<'a> {
    user: &'a str,
    rooms: &'a [&'a str],
}

/// Opens a WebSocket to `base`, reads the open packet, connects to the main
/// namespace with `user` and `rooms` as the auth payload and waits for the
/// namespace's connect answer.
pub async fn open(base: &str, user: &str, rooms: &[&str]) -> Result<Ws> {
    let url = endpoint(base);
    // As small as our own client's (client.rs): the same load generator cost.
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024);
    let handshake = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
    let (mut ws, _) = match tokio::time::timeout(STEP_TIMEOUT, handshake).await {
        Err(_) => bail!("WebSocket handshake with {url} timed out"),
        Ok(Err(e)) => bail!("WebSocket handshake with {url}: {}", error_chain(e)),
        Ok(Ok(x)) => x,
    };
    let open = next_text(&mut ws, &url, "the open packet").await?;
    if !open.starts_with('0') {
        bail!(
            "first packet from {url} is not an Engine.IO open packet: {}",
            truncate(&open, 200)
        );
    }
    let auth = serde_json::to_string(&Auth { user, rooms })?;
    ws.send(WsMessage::text(format!("40{auth}")))
        .await
        .map_err(|e| anyhow!("sending the namespace connect to {url}: {}", error_chain(e)))?;
    loop {
        let packet = next_text(&mut ws, &url, "the namespace connect answer").await?;
        if packet == PING {
            ws.send(WsMessage::text(PONG)).await?;
            continue;
        }
        if packet.starts_with("40") {
            return Ok(ws);
        }
        if packet.starts_with("44") {
            bail!(
                "{url} refused the namespace connect: {}",
                truncate(&packet, 200)
            );
        }
        bail!(
            "unexpected packet from {url} before the connect answer: {}",
            truncate(&packet, 200)
        );
    }
}

async fn next_text(ws: &mut Ws, url: &str, what: &str) -> Result<String> {
    let next = tokio::time::timeout(STEP_TIMEOUT, ws.next())
        .await
        .map_err(|_| anyhow!("no {what} from {url} within {:?}", STEP_TIMEOUT))?;
    match next {
        Some(Ok(WsMessage::Text(t))) => Ok(t.as_str().to_owned()),
        Some(Ok(other)) => bail!("{what} from {url} is not text: {other:?}"),
        Some(Err(e)) => bail!("reading {what} from {url}: {}", error_chain(e)),
        None => bail!("{url} closed before {what}"),
    }
}

#[derive(Serialize)]
struct SendPayload<'a> {
    room: &'a str,
    body: &'a str,
}

/// `42["send",{"room":..,"body":..}]`
pub fn send_frame(room: &str, body: &str) -> WsMessage {
    let payload = serde_json::to_string(&("send", SendPayload { room, body })).unwrap_or_default();
    WsMessage::text(format!("42{payload}"))
}

/// A `message` event's payload, borrowed from the packet text.
#[derive(Deserialize)]
pub struct MessageEvent<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
}

/// What one Engine.IO packet means to the fan-out scenario.
pub enum Packet<'a> {
    Ping,
    Message(MessageEvent<'a>),
    /// Another event, a noop, or the server closing the namespace.
    Other(&'a str),
    /// A `message` event that did not parse.
    Bad(String),
}

pub fn parse(text: &str) -> Packet<'_> {
    if text == PING {
        return Packet::Ping;
    }
    let Some(event) = text.strip_prefix("42") else {
        return Packet::Other(text);
    };
    match serde_json::from_str::<(Cow<str>, MessageEvent)>(event) {
        Ok((name, m)) if name == "message" => Packet::Message(m),
        Ok(_) => Packet::Other(text),
        Err(e) => Packet::Bad(format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_engine_io_v4_websocket_urls() {
        assert_eq!(
            endpoint("http://127.0.0.1:9101/"),
            "ws://127.0.0.1:9101/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            endpoint("127.0.0.1:9102"),
            "ws://127.0.0.1:9102/socket.io/?EIO=4&transport=websocket"
        );
    }

    #[test]
    fn send_frames_are_socket_io_events() {
        let WsMessage::Text(t) = send_frame("r\"1", "0.5.0") else {
            panic!("not text")
        };
        assert_eq!(t.as_str(), r#"42["send",{"room":"r\"1","body":"0.5.0"}]"#);
    }

    #[test]
    fn packets_parse() {
        assert!(matches!(parse("2"), Packet::Ping));
        let Packet::Message(m) = parse(r#"42["message",{"room":"r1","from":"u","body":"1.2.3"}]"#)
        else {
            panic!("not a message")
        };
        assert_eq!((&*m.room, &*m.from, &*m.body), ("r1", "u", "1.2.3"));
        assert!(matches!(
            parse(r#"42["other",{"room":"r","from":"u","body":"b"}]"#),
            Packet::Other(_)
        ));
        assert!(matches!(parse("41"), Packet::Other(_)));
        assert!(matches!(
            parse(r#"42["message",{"room":1}]"#),
            Packet::Bad(_)
        ));
    }
}
