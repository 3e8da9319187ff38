//! REST request and response bodies. The `ToSchema` derives feed the API
//! server's generated `/openapi.json`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ErrorCode;

/// A stored chat message. `seq` starts at 1 in each room and has no gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub body: String,
    pub ts: u64,
    pub client_msg_id: Option<String>,
}

/// A room as one caller sees it: v1.1 adds the caller's read state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Room {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: u64,
    pub member_count: u64,
    /// The latest seq in the room, 0 if it has no message.
    pub last_seq: u64,
    /// The caller's read marker (0 at first, and for services).
    pub read_seq: u64,
    /// `last_seq - read_seq`.
    pub unread: u64,
}

impl Room {
    /// Sets the read state for a viewer whose marker is `read_seq`; a
    /// marker is never above the room's latest seq.
    pub fn with_read_state(mut self, last_seq: u64, read_seq: u64) -> Room {
        self.last_seq = last_seq;
        self.read_seq = read_seq.min(last_seq);
        self.unread = last_seq - self.read_seq;
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub user: String,
    /// `service` for a service token (v1.1); a user token by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// Who a token speaks for: a user, or an application backend (v1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    #[default]
    User,
    Service,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub user: String,
    pub expires_at: u64,
    #[serde(default)]
    pub scope: TokenScope,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateRoomRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Initial members besides the caller (at most 1000 by default).
    #[serde(default)]
    #[schema(max_items = 1000, inline, value_type = Option<Vec<UserId>>)]
    pub members: Option<Vec<String>>,
    /// Services only (v1.1): the user recorded as the room's creator, who
    /// becomes a member. A user may only name themself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<UserId>)]
    pub created_by: Option<String>,
}

/// A user id: 1-64 characters of `[A-Za-z0-9_.-]`.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
pub struct UserId(#[allow(dead_code)] String);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<Room>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user: String,
    pub online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PostMessageRequest {
    /// 1..4096 bytes of UTF-8 (JSON Schema counts characters: a body of
    /// multi-byte characters reaches the byte limit sooner).
    #[schema(min_length = 1, max_length = 4096)]
    pub body: String,
    /// Repeating it (same sender) returns the original message. 1..128 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub client_msg_id: Option<String>,
    /// Services only (v1.1): the member to publish as. A user may only
    /// name themself (400 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<UserId>)]
    pub from: Option<String>,
}

/// `PUT /v1/rooms/{room}/read` (v1.1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadRequest {
    /// The seq read up to; above the room's latest it counts as the latest.
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    #[serde(deserialize_with = "seq_field")]
    pub seq: u64,
}

/// A seq as JSON: an integer in `0..=i64::MAX` (JSON Schema's `integer`,
/// so `3.0` counts and `3.5` does not). `None` for anything else.
pub fn seq_from_json(value: &serde_json::Value) -> Option<u64> {
    let seq = match value.as_u64() {
        Some(n) => n,
        None => {
            let f = value.as_f64()?;
            if f.fract() != 0.0 || !(0.0..=i64::MAX as f64).contains(&f) {
                return None;
            }
            f as u64
        }
    };
    (seq <= i64::MAX as u64).then_some(seq)
}

fn seq_field<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    seq_from_json(&value).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "seq must be an integer in 0..={}, not {value}",
            i64::MAX
        ))
    })
}

/// The caller's read marker after `PUT .../read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadMarker {
    pub room: String,
    pub read_seq: u64,
}

/// One member's read marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberRead {
    pub user: String,
    pub seq: u64,
}

/// `GET /v1/rooms/{room}/reads`: one entry per member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadList {
    pub reads: Vec<MemberRead>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectResponse {
    pub url: String,
    pub ticket: String,
    pub server_id: String,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Ready,
    Draining,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    pub id: String,
    pub url: String,
    pub state: ServerState,
    pub connections: u64,
    pub last_seen_ms: u64,
    /// The server's own load figure in 0..=1 (connections over capacity),
    /// what placement weighs besides connections. Added after v1.1.
    #[serde(default)]
    pub load: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// `{"error": {"code": ..., "message": ...}}`, the body of every REST error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_serializes_with_contract_field_names_and_null_client_msg_id() {
        let m = Message {
            room: "r_1".into(),
            seq: 3,
            id: "m_1".into(),
            from: "alice".into(),
            body: "hi".into(),
            ts: 17,
            client_msg_id: None,
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"room":"r_1","seq":3,"id":"m_1","from":"alice","body":"hi","ts":17,"client_msg_id":null})
        );
    }

    #[test]
    fn error_body_has_the_contract_shape() {
        let v = serde_json::to_value(ErrorBody::new(ErrorCode::NotFound, "no such room")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":"not_found","message":"no such room"}})
        );
    }
}
