//! Latency histograms (HDR, microseconds) shared by many reader tasks, and
//! their summaries.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency tracked exactly: two minutes. Larger values saturate.
const MAX_US: u64 = 120_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A histogram split into a few locked shards so that reader tasks on
/// different worker threads rarely wait for each other.
pub struct Sharded {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Sharded {
    pub fn new(shards: usize) -> Sharded {
        Sharded {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub fn record(&self, key: usize, micros: u64) {
        let shard = &self.shards[key % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(micros.clamp(1, MAX_US));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = out.add(&*h);
        }
        out
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean().round() as u64,
        }
    }

    /// One line in milliseconds for the human report.
    pub fn line_ms(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.mean),
            self.count
        )
    }
}

/// Microseconds as milliseconds with a sensible number of decimals.
pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_summaries_report_percentiles() {
        let s = Sharded::new(4);
        for i in 1..=1000u64 {
            s.record(i as usize, i * 10);
        }
        let sum = Summary::of(&s.merged());
        assert_eq!(sum.count, 1000);
        assert!((4990..=5010).contains(&sum.p50), "{sum:?}");
        assert!((9890..=9910).contains(&sum.p99), "{sum:?}");
        assert!((9990..=10010).contains(&sum.max), "{sum:?}");
        assert_eq!(Summary::of(&new_histogram()).count, 0);
    }
}
