//! [`SendRateLimit`]: a token bucket per connection for `send` and `typing`
//! frames. Over the limit a frame is refused with `rate_limited` (nothing
//! stored, the connection stays open); a client that keeps pushing after
//! being refused `abuse_limit` times in a row is closed with 1008.

use std::time::Instant;

#[derive(Debug)]
pub struct SendRateLimit {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
    refused_in_a_row: u32,
    abuse_limit: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    /// Refused, and the client has ignored enough refusals to be dropped.
    Abuse,
}

impl SendRateLimit {
    /// `rate_per_s == 0` disables the limit.
    pub fn new(rate_per_s: u32, burst: u32, abuse_limit: u32, now: Instant) -> Self {
        SendRateLimit {
            rate_per_s: rate_per_s as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            updated: now,
            refused_in_a_row: 0,
            abuse_limit,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.rate_per_s == 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            Verdict::Allow
        } else {
            self.refused_in_a_row += 1;
            if self.abuse_limit > 0 && self.refused_in_a_row >= self.abuse_limit {
                Verdict::Abuse
            } else {
                Verdict::Refuse
            }
        }
    }
}

/// Per-user buckets shared by all of a user's sessions on this server, so
/// opening more connections does not multiply a user's allowance. (Across
/// chat servers the limit applies per server: a global one would cost a
/// Redis round trip per send.)
#[derive(Default)]
pub struct UserRateLimits {
    buckets: std::sync::Mutex<std::collections::HashMap<String, SendRateLimit>>,
}

impl UserRateLimits {
    pub fn check(&self, user: &str, rate_per_s: u32, burst: u32, now: Instant) -> bool {
        if rate_per_s == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(user.to_owned())
            .or_insert_with(|| SendRateLimit::new(rate_per_s, burst, 0, now));
        bucket.check(now) == Verdict::Allow
    }

    /// Forgets a user whose last session on this server ended.
    pub fn forget(&self, user: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut limit = SendRateLimit::new(10, 3, 0, t0);
        assert_eq!(limit.check(t0), Verdict::Allow);
        assert_eq!(limit.check(t0), Verdict::Allow);
        assert_eq!(limit.check(t0), Verdict::Allow);
        assert_eq!(limit.check(t0), Verdict::Refuse);
        // 10/s: one token back after 100 ms.
        assert_eq!(limit.check(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(
            limit.check(t0 + Duration::from_millis(100)),
            Verdict::Refuse
        );
    }

    #[test]
    fn ignoring_refusals_is_abuse() {
        let t0 = Instant::now();
        let mut limit = SendRateLimit::new(1, 1, 3, t0);
        assert_eq!(limit.check(t0), Verdict::Allow);
        assert_eq!(limit.check(t0), Verdict::Refuse);
        assert_eq!(limit.check(t0), Verdict::Refuse);
        assert_eq!(limit.check(t0), Verdict::Abuse);
    }

    #[test]
    fn a_users_sessions_share_one_allowance() {
        let t0 = Instant::now();
        let limits = UserRateLimits::default();
        // Two "sessions" of alice draw from the same bucket of 4.
        let allowed = (0..8).filter(|_| limits.check("alice", 1, 4, t0)).count();
        assert_eq!(allowed, 4);
        assert!(
            limits.check("bob", 1, 4, t0),
            "other users are not affected"
        );
        limits.forget("alice");
        assert!(limits.check("alice", 1, 4, t0));
    }

    #[test]
    fn zero_rate_disables_the_limit() {
        let t0 = Instant::now();
        let mut limit = SendRateLimit::new(0, 1, 1, t0);
        for _ in 0..1000 {
            assert_eq!(limit.check(t0), Verdict::Allow);
        }
    }
}
