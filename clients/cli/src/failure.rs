//! Why a command failed, as one line and an exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | bad usage or input (also a request the server refused as invalid) |
//! | 2 | not found or forbidden (unknown room, not a member) |
//! | 3 | not logged in, or the token was refused or has expired |
//! | 4 | the service is unreachable or unavailable |
//! | 5 | the server answered outside the contract (malformed answer or frame) |

use chat_client::{Error, ErrorKind};

pub const USAGE: u8 = 1;
pub const NOT_FOUND: u8 = 2;
pub const AUTH: u8 = 3;
pub const UNAVAILABLE: u8 = 4;
pub const PROTOCOL: u8 = 5;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: String) -> Failure {
        Failure {
            code: USAGE,
            message,
        }
    }

    pub fn auth(message: String) -> Failure {
        Failure {
            code: AUTH,
            message,
        }
    }

    pub fn protocol(message: String) -> Failure {
        Failure {
            code: PROTOCOL,
            message,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e.kind() {
            ErrorKind::InvalidArgument | ErrorKind::InvalidRequest | ErrorKind::Closed => USAGE,
            ErrorKind::NotFound | ErrorKind::Forbidden => NOT_FOUND,
            ErrorKind::Unauthorized => AUTH,
            ErrorKind::Unavailable => UNAVAILABLE,
            ErrorKind::Protocol => PROTOCOL,
        };
        let mut message = e.to_string();
        if code == AUTH {
            message.push_str(" (run `chat login <user>` or set CHAT_TOKEN)");
        }
        Failure { code, message }
    }
}

/// One line: newlines and other control characters from server text are
/// replaced, so an error never spans lines.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
