//! WebSocket tickets: `base64url(claims).base64url(hmac)`, bound to one
//! user and one chat server, expiring after seconds. The chat server
//! enforces single use: in its own memory for a ticket that says when it
//! was issued, against the store's pending-ticket set for one that does not
//! (minted by an API server from before `issued_at_ms`, or for a chat server
//! from before it, which needs the pending entry).

use serde::{Deserialize, Serialize};

use crate::{b64, sign, unb64, verify, AuthError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Ticket id, the key of the pending-ticket entry.
    pub id: String,
    pub user: String,
    pub server_id: String,
    /// Expiry in milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// When the API server issued it (ms since the epoch), present when the
    /// chat server's health says it tracks used tickets itself: no pending
    /// entry was written to the store, and the chat server refuses a
    /// ticket issued before it started (its memory of used tickets starts
    /// empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<u64>,
}

pub fn mint(secret: &[u8], ticket: &Ticket) -> String {
    let payload = b64(&serde_json::to_vec(ticket).expect("ticket serialises"));
    let signature = b64(&sign(secret, payload.as_bytes()));
    format!("{payload}.{signature}")
}

/// Checks signature, expiry and that the ticket names `server_id`.
pub fn verify_ticket(
    secret: &[u8],
    text: &str,
    server_id: &str,
    now_ms: u64,
) -> Result<Ticket, AuthError> {
    let (payload, signature) = text.split_once('.').ok_or(AuthError::Malformed)?;
    let signature = unb64(signature).ok_or(AuthError::Malformed)?;
    if !verify(secret, payload.as_bytes(), &signature) {
        return Err(AuthError::Signature);
    }
    let ticket: Ticket = unb64(payload)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    if ticket.expires_at_ms <= now_ms {
        return Err(AuthError::Expired);
    }
    if ticket.server_id != server_id {
        return Err(AuthError::WrongServer);
    }
    Ok(ticket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            id: "t1".into(),
            user: "alice".into(),
            server_id: "chat-1".into(),
            expires_at_ms: 5000,
            issued_at_ms: Some(1000),
        }
    }

    /// Tickets minted before `issued_at_ms` still verify, and a ticket
    /// without it is minted as before (for chat servers that predate it).
    #[test]
    fn tickets_without_an_issue_time_verify_and_mint_as_before() {
        let old_payload =
            b64(br#"{"id":"t1","user":"alice","server_id":"chat-1","expires_at_ms":5000}"#);
        let old = format!("{old_payload}.{}", b64(&sign(b"k", old_payload.as_bytes())));
        let ticket = verify_ticket(b"k", &old, "chat-1", 1000).unwrap();
        assert_eq!(ticket.issued_at_ms, None);
        assert_eq!(mint(b"k", &ticket), old);
    }

    #[test]
    fn minted_tickets_verify_on_their_server_only() {
        let text = mint(b"k", &ticket());
        assert_eq!(
            verify_ticket(b"k", &text, "chat-1", 1000).unwrap(),
            ticket()
        );
        assert_eq!(
            verify_ticket(b"k", &text, "chat-2", 1000),
            Err(AuthError::WrongServer)
        );
    }

    #[test]
    fn expired_forged_and_malformed_tickets_are_refused() {
        let text = mint(b"k", &ticket());
        assert_eq!(
            verify_ticket(b"k", &text, "chat-1", 5000),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify_ticket(b"other", &text, "chat-1", 1000),
            Err(AuthError::Signature)
        );
        for bad in ["", "abc", "a.b", ".", "!!!.???"] {
            assert!(verify_ticket(b"k", bad, "chat-1", 1000).is_err(), "{bad}");
        }
    }
}
