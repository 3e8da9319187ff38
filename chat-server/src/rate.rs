//! [`SendRateLimit`]: a token bucket per connection for `send` and `typing`
//! frames. Over the limit a frame is refused with `rate_limited` (nothing
//! stored, the connection stays open); a client that keeps pushing after
//! being refused `abuse_limit` times in a row is closed with 1008.

use std::time::Instant;

#[derive(Debug, Clone)]
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
        Self::shared(rate_per_s, burst, 1, abuse_limit, now)
    }

    /// One of `share` equal parts of a limit (the part one chat server
    /// enforces for a user with sessions on `share` servers). The burst
    /// part is at least one frame.
    pub fn shared(rate_per_s: u32, burst: u32, share: u32, abuse_limit: u32, now: Instant) -> Self {
        let share = share.max(1) as f64;
        let burst = (burst.max(1) as f64 / share).max(1.0);
        SendRateLimit {
            rate_per_s: rate_per_s as f64 / share,
            burst,
            tokens: burst,
            updated: now,
            refused_in_a_row: 0,
            abuse_limit,
        }
    }

    /// Adds the tokens earned since the last check.
    fn check_refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        self.updated = now;
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.rate_per_s == 0.0 {
            return Verdict::Allow;
        }
        self.check_refill(now);
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
/// opening more connections does not multiply a user's allowance.
///
/// Across the cluster the limit holds too, without a store round trip per
/// send: a user with sessions on `k` chat servers gets `1/k` of the rate and
/// of the burst on each ([`Self::set_shares`], from the store's presence
/// records, read when a session starts and at every presence refresh). Until
/// a server rereads `k` (at most a presence-refresh interval after the user
/// opened a session elsewhere) the user can exceed the limit by the
/// difference between the two shares.
#[derive(Default)]
pub struct UserRateLimits {
    buckets: std::sync::Mutex<std::collections::HashMap<String, UserBucket>>,
}

struct UserBucket {
    limit: SendRateLimit,
    share: u32,
}

impl UserRateLimits {
    pub fn check(&self, user: &str, rate_per_s: u32, burst: u32, now: Instant) -> bool {
        if rate_per_s == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(user.to_owned())
            .or_insert_with(|| UserBucket {
                limit: SendRateLimit::new(rate_per_s, burst, 0, now),
                share: 1,
            });
        bucket.limit.check(now) == Verdict::Allow
    }

    /// The number of chat servers each user has sessions on. A changed
    /// share starts a new bucket of the new size, with no more tokens than
    /// the old one had left (the user cannot gain a fresh burst by opening a
    /// session elsewhere).
    pub fn set_shares(
        &self,
        shares: impl IntoIterator<Item = (String, u32)>,
        rate_per_s: u32,
        burst: u32,
        now: Instant,
    ) {
        if rate_per_s == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (user, share) in shares {
            let share = share.max(1);
            let bucket = buckets.entry(user).or_insert_with(|| UserBucket {
                limit: SendRateLimit::shared(rate_per_s, burst, share, 0, now),
                share,
            });
            if bucket.share != share {
                let mut limit = SendRateLimit::shared(rate_per_s, burst, share, 0, now);
                bucket.limit.check_refill(now);
                limit.tokens = limit.tokens.min(bucket.limit.tokens);
                *bucket = UserBucket { limit, share };
            }
        }
    }

    /// Forgets a user whose last session on this server ended.
    pub fn forget(&self, user: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

/// WebSocket handshakes per client address: a token bucket per IP, so one
/// address cannot flood a chat server with upgrades (each costs a ticket
/// check and, when valid, a session). Checked before anything else.
#[derive(Default)]
pub struct HandshakeLimits {
    buckets: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, SendRateLimit>>,
}

impl HandshakeLimits {
    /// Addresses remembered before idle ones are dropped.
    const MAX_TRACKED: usize = 50_000;

    pub fn check(&self, ip: std::net::IpAddr, rate_per_s: u32, burst: u32, now: Instant) -> bool {
        if rate_per_s == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= Self::MAX_TRACKED && !buckets.contains_key(&ip) {
            // A bucket full again is the same as no bucket: forget those.
            buckets.retain(|_, b| {
                b.check_refill(now);
                b.tokens < b.burst
            });
        }
        buckets
            .entry(ip)
            .or_insert_with(|| SendRateLimit::new(rate_per_s, burst, 0, now))
            .check(now)
            == Verdict::Allow
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

    /// A user on two chat servers gets half the rate and half the burst on
    /// each, so the cluster-wide total stays within the limit; the share
    /// change does not hand out a fresh burst.
    #[test]
    fn a_user_on_several_servers_gets_a_share_on_each() {
        let t0 = Instant::now();
        let (a, b) = (UserRateLimits::default(), UserRateLimits::default());
        for server in [&a, &b] {
            server.set_shares([("alice".to_string(), 2)], 1, 12, t0);
        }
        let allowed = |s: &UserRateLimits| (0..20).filter(|_| s.check("alice", 1, 12, t0)).count();
        assert_eq!(
            allowed(&a) + allowed(&b),
            12,
            "one burst of 12 over both servers"
        );
        // Back to one server: the bucket grows to the whole burst, but
        // starts with what the share had left (nothing).
        a.set_shares([("alice".to_string(), 1)], 1, 12, t0);
        assert!(!a.check("alice", 1, 12, t0));
        // Refill at the whole rate: 1/s.
        assert!(a.check("alice", 1, 12, t0 + Duration::from_secs(1)));
        // Shares are ignored with the limit off.
        let c = UserRateLimits::default();
        c.set_shares([("bob".to_string(), 3)], 0, 12, t0);
        assert!((0..100).all(|_| c.check("bob", 0, 12, t0)));
    }

    #[test]
    fn handshakes_are_limited_per_address() {
        let t0 = Instant::now();
        let limits = HandshakeLimits::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!((0..5).filter(|_| limits.check(a, 1, 3, t0)).count(), 3);
        assert!(limits.check(b, 1, 3, t0), "another address has its own");
        assert!(limits.check(a, 1, 3, t0 + Duration::from_secs(1)));
        assert!((0..100).all(|_| limits.check(a, 0, 3, t0)), "0: off");
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
