//! The one error type of the crate.
//!
//! Every variant carries enough context to print a useful one-line message
//! (which call, which room, what the server said). [`Error::kind`] sorts
//! them into the few classes an application (or a CLI's exit code) acts on,
//! so nobody has to match on variants and messages.

use chat_protocol::ErrorCode;

/// What went wrong, by what a caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller passed a bad argument; nothing was sent.
    InvalidArgument,
    /// The server refused the request as malformed (`invalid_request`,
    /// `payload_too_large`, `conflict`).
    InvalidRequest,
    /// No such room (or user, or route).
    NotFound,
    /// Not a member, or a service-only call as a user.
    Forbidden,
    /// The token was refused (missing, expired, forged), even after asking
    /// the token provider again.
    Unauthorized,
    /// The service could not be reached or is not serving right now
    /// (network error, `unavailable`, `no_chat_server`, `rate_limited`).
    Unavailable,
    /// The server answered with something that is not the contract.
    Protocol,
    /// The connection was closed by the application.
    Closed,
}

/// Errors of the chat client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An argument was rejected before anything was sent.
    #[error("invalid {argument}: {reason}")]
    InvalidArgument {
        argument: &'static str,
        reason: String,
    },

    /// A REST call answered with an error status. `code` is the contract's
    /// error code (`not_found`, `forbidden`, ...) or, for a body that is not
    /// the contract's, one derived from the status.
    #[error("{method} {path}: {message} ({code}, HTTP {status})")]
    Api {
        method: String,
        path: String,
        status: u16,
        code: String,
        message: String,
    },

    /// A request or socket could not reach the server.
    #[error("{context}: {detail}")]
    Network { context: String, detail: String },

    /// The server refused a `send` (`forbidden`, `invalid_request`).
    #[error("send to {room} refused: {message} ({code})")]
    SendRefused {
        room: String,
        client_msg_id: String,
        code: ErrorCode,
        message: String,
    },

    /// An `error` frame not tied to one of our sends.
    #[error("server error: {message} ({code})")]
    Server { code: ErrorCode, message: String },

    /// The WebSocket upgrade was refused with an HTTP status (an expired or
    /// foreign ticket gets 401).
    #[error("WebSocket handshake with {url} refused: HTTP {status}")]
    Handshake { url: String, status: u16 },

    /// The server sent something outside the contract.
    #[error("{context}: {detail}")]
    Protocol { context: String, detail: String },

    /// The token provider failed.
    #[error("getting a token: {0}")]
    Token(String),

    /// The connection was closed by the application (pending sends fail
    /// with this).
    #[error("the connection is closed")]
    Closed,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Api { status, code, .. } => kind_of_code(code).unwrap_or(match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                404 => ErrorKind::NotFound,
                s if *s >= 500 || *s == 429 => ErrorKind::Unavailable,
                _ => ErrorKind::InvalidRequest,
            }),
            Error::Network { .. } => ErrorKind::Unavailable,
            Error::SendRefused { code, .. } | Error::Server { code, .. } => {
                kind_of_code(code.as_str()).unwrap_or(ErrorKind::InvalidRequest)
            }
            Error::Handshake { status, .. } => match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                _ => ErrorKind::Unavailable,
            },
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Token(_) => ErrorKind::Unauthorized,
            Error::Closed => ErrorKind::Closed,
        }
    }

    /// The HTTP status of a REST error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Handshake { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }

    pub(crate) fn network(context: impl Into<String>, e: &dyn std::error::Error) -> Error {
        Error::Network {
            context: context.into(),
            detail: error_chain(e),
        }
    }

    pub(crate) fn protocol(context: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Protocol {
            context: context.into(),
            detail: detail.into(),
        }
    }
}

fn kind_of_code(code: &str) -> Option<ErrorKind> {
    Some(match code {
        "unauthorized" => ErrorKind::Unauthorized,
        "forbidden" => ErrorKind::Forbidden,
        "not_found" => ErrorKind::NotFound,
        "invalid_request" | "invalid_frame" | "conflict" | "payload_too_large" => {
            ErrorKind::InvalidRequest
        }
        "rate_limited" | "no_chat_server" | "unavailable" => ErrorKind::Unavailable,
        _ => return None,
    })
}

/// An error and its sources on one line (reqwest and tungstenite put the
/// useful part, e.g. "Connection refused", in a source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_classified_by_code_then_status() {
        let api = |status, code: &str| Error::Api {
            method: "GET".into(),
            path: "/v1/rooms/x".into(),
            status,
            code: code.into(),
            message: "m".into(),
        };
        assert_eq!(api(404, "not_found").kind(), ErrorKind::NotFound);
        assert_eq!(api(403, "forbidden").kind(), ErrorKind::Forbidden);
        assert_eq!(api(401, "whatever").kind(), ErrorKind::Unauthorized);
        assert_eq!(api(503, "no_chat_server").kind(), ErrorKind::Unavailable);
        assert_eq!(api(502, "bad_gateway").kind(), ErrorKind::Unavailable);
        assert_eq!(
            api(400, "invalid_request").kind(),
            ErrorKind::InvalidRequest
        );
        assert!(api(429, "rate_limited").is_retryable());
    }

    #[test]
    fn messages_name_the_call() {
        let e = Error::Api {
            method: "GET".into(),
            path: "/v1/rooms/r_1".into(),
            status: 404,
            code: "not_found".into(),
            message: "no such room".into(),
        };
        assert_eq!(
            e.to_string(),
            "GET /v1/rooms/r_1: no such room (not_found, HTTP 404)"
        );
    }
}
