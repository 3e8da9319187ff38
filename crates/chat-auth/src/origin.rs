//! Which browser origins may use the service: the API's CORS answers and
//! the chat servers' WebSocket handshakes check the same list.
//!
//! An entry is an exact origin (`https://app.example.com`), `*` (any), or
//! an origin with `*` as its port (`http://localhost:*`), which is what the
//! local mode allows so that a dev server on any port works out of the box.
//! A request without an `Origin` header is not from a browser page and is
//! not subject to this check (tickets and tokens still are).

/// The allowed origins, parsed once from the flag's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    entries: Vec<String>,
}

/// The local mode's default: pages served from loopback on any port.
pub const LOCALHOST_ORIGINS: &[&str] =
    &["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

impl AllowedOrigins {
    pub fn new<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        AllowedOrigins {
            entries: entries
                .into_iter()
                .map(|e| e.as_ref().trim().trim_end_matches('/').to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a page from `origin` (the header's value) may call us.
    pub fn allows(&self, origin: &str) -> bool {
        self.entries.iter().any(|entry| matches(entry, origin))
    }
}

fn matches(entry: &str, origin: &str) -> bool {
    if entry == "*" || entry == origin {
        return true;
    }
    let Some(host) = entry.strip_suffix(":*") else {
        return false;
    };
    // `http://localhost:*` matches the host with any port, or none.
    origin == host
        || origin
            .strip_prefix(host)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_any_port_entries() {
        let allowed = AllowedOrigins::new(["https://app.example.com/", "http://localhost:*"]);
        assert!(allowed.allows("https://app.example.com"));
        assert!(allowed.allows("http://localhost:5173"));
        assert!(allowed.allows("http://localhost"));
        assert!(!allowed.allows("http://localhost.evil.com"));
        assert!(!allowed.allows("http://localhost:5173.evil.com"));
        assert!(!allowed.allows("http://localhost:"));
        assert!(
            !allowed.allows("https://localhost:5173"),
            "scheme is part of the origin"
        );
        assert!(!allowed.allows("https://app.example.com.evil.com"));
        assert!(!allowed.allows("null"));
        assert!(AllowedOrigins::new(["*"]).allows("https://anything.test"));
        assert!(!AllowedOrigins::default().allows("http://localhost:1"));
    }

    #[test]
    fn the_local_default_covers_loopback_pages_only() {
        let local = AllowedOrigins::new(LOCALHOST_ORIGINS);
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
        ] {
            assert!(local.allows(ok), "{ok}");
        }
        for refused in [
            "http://192.168.1.2:8080",
            "https://example.com",
            "http://127.0.0.2:80",
        ] {
            assert!(!local.allows(refused), "{refused}");
        }
    }
}
