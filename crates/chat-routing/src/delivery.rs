//! A [`Delivery`] is one server frame for a set of users on one chat server.
//! The frame is serialised once by the router and shared as `Arc<str>` by
//! every session that writes it: no per-recipient serialisation.
//!
//! Batch framing on a link: a text WebSocket message holding, per delivery,
//! a header line (`{"room":..,"seq":..,"users":[..]}`) and the frame line.
//! JSON never contains a raw newline (serde escapes control characters), so
//! lines split cleanly and the frame bytes are forwarded without re-parsing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A stored message: ordered and deduplicated by `seq` per room.
    Message,
    /// An ephemeral frame (typing): delivered as is, never to `exclude_user`.
    Ephemeral,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub room: String,
    /// The message seq; 0 for ephemeral frames.
    pub seq: u64,
    /// Recipients on the target chat server (all their sessions).
    pub users: Vec<String>,
    /// The complete server frame as JSON text.
    pub frame: Arc<str>,
    /// When the message was stored (ms since the epoch; 0 for ephemeral
    /// frames, and from senders that predate it): the start of the
    /// delivery latency the target measures.
    pub ts_ms: u64,
}

impl Delivery {
    pub fn kind(&self) -> DeliveryKind {
        if self.seq == 0 {
            DeliveryKind::Ephemeral
        } else {
            DeliveryKind::Message
        }
    }
}

/// The header as written: borrows from the delivery, so encoding a batch
/// copies no recipient list.
#[derive(Serialize)]
struct HeaderOut<'a> {
    room: &'a str,
    seq: u64,
    users: &'a [String],
    #[serde(skip_serializing_if = "is_zero")]
    ts: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The header as read.
#[derive(Deserialize)]
struct Header {
    room: String,
    seq: u64,
    users: Vec<String>,
    /// Absent from links of servers that predate it.
    #[serde(default)]
    ts: u64,
}

pub fn encode_batch(deliveries: &[Arc<Delivery>]) -> String {
    let mut out = String::with_capacity(deliveries.iter().map(|d| d.frame.len() + 64).sum());
    for d in deliveries {
        let header = HeaderOut {
            room: &d.room,
            seq: d.seq,
            users: &d.users,
            ts: d.ts_ms,
        };
        out.push_str(&serde_json::to_string(&header).expect("header serialises"));
        out.push('\n');
        out.push_str(&d.frame);
        out.push('\n');
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("malformed delivery batch: {0}")]
pub struct BatchError(String);

pub fn decode_batch(text: &str) -> Result<Vec<Delivery>, BatchError> {
    let mut out = Vec::new();
    let mut lines = text.split_terminator('\n');
    while let Some(header_line) = lines.next() {
        let header: Header =
            serde_json::from_str(header_line).map_err(|e| BatchError(e.to_string()))?;
        let frame = lines
            .next()
            .ok_or_else(|| BatchError("header without frame".into()))?;
        out.push(Delivery {
            room: header.room,
            seq: header.seq,
            users: header.users,
            frame: Arc::from(frame),
            ts_ms: header.ts,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_frames_with_escaped_newlines() {
        let a = Arc::new(Delivery {
            room: "r1".into(),
            seq: 7,
            users: vec!["alice".into(), "bob".into()],
            frame: Arc::from(r#"{"type":"message","body":"two\nlines"}"#),
            ts_ms: 1_700_000_000_000,
        });
        let b = Arc::new(Delivery {
            room: "r2".into(),
            seq: 0,
            users: vec![],
            frame: Arc::from(r#"{"type":"typing"}"#),
            ts_ms: 0,
        });
        let decoded = decode_batch(&encode_batch(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(decoded, vec![(*a).clone(), (*b).clone()]);
        assert_eq!(decoded[1].kind(), DeliveryKind::Ephemeral);
        assert!(decode_batch("").unwrap().is_empty());
    }

    #[test]
    fn malformed_batches_are_errors_not_panics() {
        assert!(decode_batch("not json\n{}\n").is_err());
        assert!(decode_batch("{\"room\":\"r\",\"seq\":1,\"users\":[]}\n").is_err());
    }
}
