//! Identifier rules: user ids are chosen by clients and validated here; room,
//! message and session ids are chosen by the server and are opaque.

use rand::RngCore;

pub const MAX_USER_ID_LEN: usize = 64;

/// `1..=64` characters of `[A-Za-z0-9_.-]`. The character set also keeps
/// user ids safe inside Redis key names (no `{`, `}` or `:`).
pub fn is_valid_user_id(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_ID_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Server-chosen ids are a prefix plus 128 random bits in hex: unique without
/// coordination between replicas, and safe in key names and URLs.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Room ids come from [`new_id`]; anything else cannot name a room. Checking
/// the shape early keeps arbitrary client strings out of Redis key names.
pub fn is_plausible_room_id(room: &str) -> bool {
    room.len() <= 64
        && !room.is_empty()
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_contract_alphabet() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("a.b-c_D9"));
        assert!(is_valid_user_id(&"x".repeat(64)));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id(&"x".repeat(65)));
        assert!(!is_valid_user_id("al ice"));
        assert!(!is_valid_user_id("a{b}"));
        assert!(!is_valid_user_id("a:b"));
        assert!(!is_valid_user_id("émile"));
    }

    #[test]
    fn new_ids_are_unique_and_plausible_room_ids() {
        let a = new_id("r_");
        let b = new_id("r_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
        assert!(is_plausible_room_id(&a));
        assert!(!is_plausible_room_id("r_{x}"));
        assert!(!is_plausible_room_id(""));
    }
}
