//! Every limit of the contract in one configurable value. Defaults are the
//! contract's numbers; deployments may tighten or loosen them.

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame a client may send (contract: 64 KiB, close 1009).
    pub max_frame_bytes: usize,
    /// Largest message body in bytes (contract: 4096).
    pub max_body_bytes: usize,
    /// Longest room name in characters (contract: 100).
    pub max_room_name_chars: usize,
    /// Longest `client_msg_id` in characters.
    pub max_client_msg_id_chars: usize,
    /// Most members a room may be created with in one request.
    pub max_initial_members: usize,
    /// Largest REST request body in bytes.
    pub max_request_bytes: usize,
    /// Default and maximum page size of history reads (contract: 50, 200).
    pub default_history_limit: u32,
    pub max_history_limit: u32,
    /// Most rooms a single `resume` frame may name.
    pub max_resume_rooms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 4096,
            max_room_name_chars: 100,
            max_client_msg_id_chars: 128,
            max_initial_members: 1000,
            max_request_bytes: 64 * 1024,
            default_history_limit: 50,
            max_history_limit: 200,
            max_resume_rooms: 1000,
        }
    }
}

impl Limits {
    /// Checks a message body and optional `client_msg_id` against the limits;
    /// the error is the human text of an `invalid_request`.
    pub fn check_message(&self, body: &str, client_msg_id: Option<&str>) -> Result<(), String> {
        if body.is_empty() {
            return Err("body must not be empty".into());
        }
        if body.len() > self.max_body_bytes {
            return Err(format!(
                "body is {} bytes; at most {} are allowed",
                body.len(),
                self.max_body_bytes
            ));
        }
        if let Some(id) = client_msg_id {
            if id.is_empty() || id.chars().count() > self.max_client_msg_id_chars {
                return Err(format!(
                    "client_msg_id must be 1..{} characters",
                    self.max_client_msg_id_chars
                ));
            }
        }
        Ok(())
    }

    pub fn check_room_name(&self, name: &str) -> Result<(), String> {
        let chars = name.chars().count();
        if chars == 0 || chars > self.max_room_name_chars {
            return Err(format!(
                "name must be 1..{} characters",
                self.max_room_name_chars
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_are_bounded_in_bytes() {
        let limits = Limits::default();
        assert!(limits.check_message("hi", None).is_ok());
        assert!(limits.check_message(&"a".repeat(4096), None).is_ok());
        assert!(limits.check_message(&"a".repeat(4097), None).is_err());
        // 2048 two-byte characters are 4096 bytes: allowed; one more is not.
        assert!(limits.check_message(&"é".repeat(2048), None).is_ok());
        assert!(limits.check_message(&"é".repeat(2049), None).is_err());
        assert!(limits.check_message("", None).is_err());
        assert!(limits.check_message("x", Some("")).is_err());
        assert!(limits.check_message("x", Some(&"c".repeat(129))).is_err());
        assert!(limits.check_message("x", Some(&"é".repeat(128))).is_ok());
    }

    #[test]
    fn room_names_are_bounded_in_characters() {
        let limits = Limits::default();
        assert!(limits.check_room_name("general").is_ok());
        assert!(limits.check_room_name(&"é".repeat(100)).is_ok());
        assert!(limits.check_room_name(&"é".repeat(101)).is_err());
        assert!(limits.check_room_name("").is_err());
    }
}
