//! Exponential backoff with full jitter: the n-th delay is uniform in
//! `[0, min(max_delay_ms, min_delay_ms * 2^n)]`. Full jitter spreads a crowd
//! of clients that lost the same server, so they do not come back in one
//! wave. Pure: the random source is passed in, so tests are deterministic.

use rand::Rng;

/// Bounds of the reconnect delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay.
    pub min_delay_ms: u64,
    /// Upper bound of every delay.
    pub max_delay_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min_delay_ms: 500,
            max_delay_ms: 30_000,
        }
    }
}

/// Counts failures and hands out the delay before the next attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling_ms(&self) -> u64 {
        let exp = self
            .config
            .min_delay_ms
            .saturating_mul(1u64 << self.failures.min(30));
        exp.min(self.config.max_delay_ms)
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay_ms(&mut self, rng: &mut impl Rng) -> u64 {
        let ceiling = self.ceiling_ms();
        self.failures = self.failures.saturating_add(1);
        if ceiling == 0 {
            0
        } else {
            rng.random_range(0..=ceiling)
        }
    }

    /// After a success: the next delay is short again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_up_to_the_maximum_and_reset() {
        let mut b = Backoff::new(BackoffConfig {
            min_delay_ms: 100,
            max_delay_ms: 1000,
        });
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling_ms());
            let d = b.next_delay_ms(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling_ms(), 100);
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<u64> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(BackoffConfig {
                    min_delay_ms: 1000,
                    max_delay_ms: 1000,
                });
                b.next_delay_ms(&mut rng)
            })
            .collect();
        assert!(delays.iter().any(|&d| d < 250));
        assert!(delays.iter().any(|&d| d > 750));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(b.next_delay_ms(&mut rng) <= 30_000);
        }
    }
}
