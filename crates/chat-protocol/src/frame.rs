//! WebSocket frames: what clients send ([`ClientFrame`], parsed here with
//! the contract's error split) and what servers send ([`ServerFrame`]).
//!
//! Parsing is separated from I/O so it is unit-tested with strings. The
//! contract distinguishes a frame that is not understood at all
//! (`invalid_frame`: bad JSON, no or unknown `type`, wrong field types) from
//! an understood frame with unacceptable content (`invalid_request`: body
//! size and the like), and both leave the connection open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Limits, Message};

/// Frames a client sends. Servers parse them with [`ClientFrame::parse`],
/// which splits the contract's two error codes; the serde derives are for
/// clients (which write these) and for the schema in `/openapi.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        room: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    Resume {
        rooms: BTreeMap<String, u64>,
    },
    Typing {
        room: String,
    },
    Ping {
        #[serde(default)]
        nonce: serde_json::Value,
    },
    /// v1.1: moves the sender's read marker (forward only).
    Read {
        room: String,
        seq: u64,
    },
}

/// Why a client frame was refused, with the `client_msg_id` to echo when the
/// frame got far enough to carry one.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub client_msg_id: Option<String>,
}

impl FrameError {
    fn invalid_frame(message: impl Into<String>) -> Self {
        FrameError {
            code: ErrorCode::InvalidFrame,
            message: message.into(),
            client_msg_id: None,
        }
    }

    pub fn into_server_frame(self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message,
            client_msg_id: self.client_msg_id,
        }
    }
}

#[derive(Deserialize)]
struct SendFields {
    room: String,
    body: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct ResumeFields {
    rooms: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct TypingFields {
    room: String,
}

#[derive(Deserialize)]
struct ReadFields {
    room: String,
    /// Checked by hand: anything but an integer >= 0 is `invalid_request`.
    #[serde(default)]
    seq: serde_json::Value,
}

impl ClientFrame {
    /// Parses one text frame. Size limits on the raw frame are enforced by
    /// the WebSocket layer (close 1009) before this is called.
    pub fn parse(text: &str, limits: &Limits) -> Result<ClientFrame, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| FrameError::invalid_frame(format!("frame is not valid JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(FrameError::invalid_frame("frame must be a JSON object"));
        };
        let Some(kind) = object.get("type").and_then(|t| t.as_str()) else {
            return Err(FrameError::invalid_frame("frame has no string \"type\""));
        };
        // Echo the client_msg_id in errors whenever it is a string, even if
        // the rest of the frame is broken: the client needs it to match up.
        let client_msg_id = object
            .get("client_msg_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let fields_error = |e: serde_json::Error| FrameError {
            code: ErrorCode::InvalidFrame,
            message: format!("bad \"{kind}\" frame: {e}"),
            client_msg_id: client_msg_id.clone(),
        };
        match kind {
            "send" => {
                let f: SendFields = serde_json::from_value(value.clone()).map_err(fields_error)?;
                if let Err(message) = limits.check_message(&f.body, f.client_msg_id.as_deref()) {
                    return Err(FrameError {
                        code: ErrorCode::InvalidRequest,
                        message,
                        client_msg_id: f.client_msg_id,
                    });
                }
                Ok(ClientFrame::Send {
                    room: f.room,
                    body: f.body,
                    client_msg_id: f.client_msg_id,
                })
            }
            "resume" => {
                let f: ResumeFields =
                    serde_json::from_value(value.clone()).map_err(fields_error)?;
                if f.rooms.len() > limits.max_resume_rooms {
                    return Err(FrameError {
                        code: ErrorCode::InvalidRequest,
                        message: format!(
                            "resume names {} rooms; at most {} are allowed",
                            f.rooms.len(),
                            limits.max_resume_rooms
                        ),
                        client_msg_id: None,
                    });
                }
                Ok(ClientFrame::Resume { rooms: f.rooms })
            }
            "typing" => {
                let f: TypingFields =
                    serde_json::from_value(value.clone()).map_err(fields_error)?;
                Ok(ClientFrame::Typing { room: f.room })
            }
            "read" => {
                let f: ReadFields = serde_json::from_value(value.clone()).map_err(fields_error)?;
                let seq = crate::rest::seq_from_json(&f.seq).ok_or_else(|| FrameError {
                    code: ErrorCode::InvalidRequest,
                    message: "\"seq\" must be an integer >= 0".into(),
                    client_msg_id: None,
                })?;
                Ok(ClientFrame::Read { room: f.room, seq })
            }
            "ping" => Ok(ClientFrame::Ping {
                nonce: object
                    .get("nonce")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            }),
            other => Err(FrameError::invalid_frame(format!(
                "unknown frame type \"{}\"",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

/// Frames the chat server sends. `Message` flattens the stored message next
/// to `"type": "message"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        server_id: String,
        user: String,
        session: String,
    },
    Message(Message),
    Ack {
        client_msg_id: Option<String>,
        room: String,
        seq: u64,
        id: String,
    },
    Resumed {
        rooms: BTreeMap<String, u64>,
    },
    Typing {
        room: String,
        user: String,
    },
    Pong {
        nonce: serde_json::Value,
    },
    Reconnect {
        reason: String,
        after_ms: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        client_msg_id: Option<String>,
    },
    /// v1.1: a member's read marker moved (to the reader's own sessions,
    /// and as a read receipt to the other members of small rooms).
    Read {
        room: String,
        user: String,
        seq: u64,
    },
    /// v1.1: a member came online (first live session anywhere) or went
    /// offline (last session closed, or its chat server counted dead).
    Presence {
        room: String,
        user: String,
        online: bool,
        ts: u64,
    },
}

/// `{"type": "message", <Message fields>}` serialised from a borrowed
/// message: the router's hot path, which would otherwise clone the message
/// (body included) only to serialise it once.
pub fn message_frame_json(message: &Message) -> String {
    #[derive(Serialize)]
    struct MessageFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        message: &'a Message,
    }
    serde_json::to_string(&MessageFrame {
        kind: "message",
        message,
    })
    .expect("message frames always serialise")
}

impl ServerFrame {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with
        // non-string keys, no custom serialisers.
        serde_json::to_string(self).expect("server frames always serialise")
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            client_msg_id: None,
        }
    }
}

/// WebSocket close codes the contract names.
pub mod close_code {
    /// A frame over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server is draining; reconnect elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Repeated abuse.
    pub const POLICY_VIOLATION: u16 = 1008;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        ClientFrame::parse(text, &Limits::default())
    }

    #[test]
    fn send_frames_parse_with_and_without_client_msg_id() {
        assert_eq!(
            parse(r#"{"type":"send","room":"r","body":"hi","client_msg_id":"c1"}"#).unwrap(),
            ClientFrame::Send {
                room: "r".into(),
                body: "hi".into(),
                client_msg_id: Some("c1".into())
            }
        );
        assert_eq!(
            parse(r#"{"type":"send","room":"r","body":"hi"}"#).unwrap(),
            ClientFrame::Send {
                room: "r".into(),
                body: "hi".into(),
                client_msg_id: None
            }
        );
        assert!(matches!(
            parse(r#"{"type":"send","room":"r","body":"hi","client_msg_id":null}"#),
            Ok(ClientFrame::Send {
                client_msg_id: None,
                ..
            })
        ));
    }

    #[test]
    fn bad_json_and_unknown_types_are_invalid_frame() {
        for text in [
            "not json",
            "{",
            "[]",
            "42",
            r#"{"no_type":1}"#,
            r#"{"type":7}"#,
            r#"{"type":"explode"}"#,
            r#"{"type":"send","room":"r"}"#,
            r#"{"type":"send","room":5,"body":"x"}"#,
            r#"{"type":"resume","rooms":{"r":-1}}"#,
            r#"{"type":"resume","rooms":[]}"#,
            r#"{"type":"typing"}"#,
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidFrame, "{text}");
        }
    }

    #[test]
    fn oversize_and_empty_bodies_are_invalid_request_and_echo_the_client_msg_id() {
        let big = "a".repeat(4097);
        let err = parse(&format!(
            r#"{{"type":"send","room":"r","body":"{big}","client_msg_id":"c9"}}"#
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(err.client_msg_id.as_deref(), Some("c9"));
        let err = parse(r#"{"type":"send","room":"r","body":""}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn broken_send_frames_still_echo_a_string_client_msg_id() {
        let err = parse(r#"{"type":"send","room":"r","client_msg_id":"c2"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
        assert_eq!(err.client_msg_id.as_deref(), Some("c2"));
    }

    #[test]
    fn resume_typing_and_ping_parse() {
        let f = parse(r#"{"type":"resume","rooms":{"a":3,"b":0}}"#).unwrap();
        let ClientFrame::Resume { rooms } = f else {
            panic!("expected resume")
        };
        assert_eq!(rooms.get("a"), Some(&3));
        assert_eq!(
            parse(r#"{"type":"typing","room":"a"}"#).unwrap(),
            ClientFrame::Typing { room: "a".into() }
        );
        assert_eq!(
            parse(r#"{"type":"ping","nonce":{"k":[1,2]}}"#).unwrap(),
            ClientFrame::Ping {
                nonce: serde_json::json!({"k":[1,2]})
            }
        );
        assert_eq!(
            parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping {
                nonce: serde_json::Value::Null
            }
        );
    }

    #[test]
    fn read_frames_take_only_integer_seqs_at_or_above_zero() {
        assert_eq!(
            parse(r#"{"type":"read","room":"r","seq":7}"#).unwrap(),
            ClientFrame::Read {
                room: "r".into(),
                seq: 7
            }
        );
        for text in [
            r#"{"type":"read","room":"r","seq":-1}"#,
            r#"{"type":"read","room":"r","seq":1.5}"#,
            r#"{"type":"read","room":"r","seq":"3"}"#,
            r#"{"type":"read","room":"r","seq":null}"#,
            r#"{"type":"read","room":"r"}"#,
            r#"{"type":"read","room":"r","seq":9223372036854775808}"#,
        ] {
            assert_eq!(
                parse(text).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{text}"
            );
        }
        assert_eq!(
            parse(r#"{"type":"read","room":"r","seq":3.0}"#).unwrap(),
            ClientFrame::Read {
                room: "r".into(),
                seq: 3
            },
            "JSON Schema's integer: 3.0 is one"
        );
        let err = parse(r#"{"type":"read","seq":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn client_frames_serialise_to_what_the_parser_reads() {
        for frame in [
            ClientFrame::Send {
                room: "r".into(),
                body: "hi".into(),
                client_msg_id: Some("c".into()),
            },
            ClientFrame::Read {
                room: "r".into(),
                seq: 3,
            },
            ClientFrame::Typing { room: "r".into() },
            ClientFrame::Ping {
                nonce: serde_json::json!(5),
            },
        ] {
            let text = serde_json::to_string(&frame).unwrap();
            assert_eq!(parse(&text).unwrap(), frame, "{text}");
        }
    }

    #[test]
    fn v1_1_server_frames_have_the_contract_shapes() {
        let read = ServerFrame::Read {
            room: "r".into(),
            user: "bob".into(),
            seq: 4,
        };
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::json!({"type":"read","room":"r","user":"bob","seq":4})
        );
        let presence = ServerFrame::Presence {
            room: "r".into(),
            user: "bob".into(),
            online: false,
            ts: 9,
        };
        assert_eq!(
            serde_json::to_value(&presence).unwrap(),
            serde_json::json!({"type":"presence","room":"r","user":"bob","online":false,"ts":9})
        );
    }

    #[test]
    fn resume_with_too_many_rooms_is_invalid_request() {
        let limits = Limits {
            max_resume_rooms: 2,
            ..Limits::default()
        };
        let err = ClientFrame::parse(r#"{"type":"resume","rooms":{"a":1,"b":1,"c":1}}"#, &limits)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn server_frames_serialize_to_the_contract_shapes() {
        let msg = Message {
            room: "r".into(),
            seq: 1,
            id: "m".into(),
            from: "a".into(),
            body: "b".into(),
            ts: 5,
            client_msg_id: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(msg.clone()).to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["client_msg_id"], serde_json::Value::Null);
        let back: ServerFrame = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, ServerFrame::Message(msg.clone()));
        let borrowed: serde_json::Value = serde_json::from_str(&message_frame_json(&msg)).unwrap();
        assert_eq!(borrowed, v, "the borrowed serialiser writes the same frame");

        let v: serde_json::Value = serde_json::from_str(
            &ServerFrame::Reconnect {
                reason: "draining".into(),
                after_ms: 10,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reconnect","reason":"draining","after_ms":10})
        );
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::error(ErrorCode::InvalidFrame, "x").to_json())
                .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "invalid_frame");
    }
}
