//! Replica decisions from live load: pure functions, table-tested.
//!
//! Like the HorizontalPodAutoscaler: the recommendation is
//! `ceil(connections / target per pod)` clamped to `[min, max]`; scaling up
//! follows it at once, scaling down only to the highest recommendation seen
//! within the stabilisation window, so a dip in traffic does not shed pods
//! that will be needed again a minute later.

use crate::crd::{AutoscalingSpec, Recommendation};

/// Replicas the current connection count calls for.
pub fn recommend(connections: i64, spec: &AutoscalingSpec) -> i32 {
    let target = spec.target_connections_per_pod.max(1);
    let needed = (connections.max(0) + target - 1) / target;
    let needed = i32::try_from(needed).unwrap_or(i32::MAX);
    needed.clamp(
        spec.min_replicas.max(0),
        spec.max_replicas.max(spec.min_replicas.max(0)),
    )
}

/// Adds `now`'s recommendation to the history, drops entries older than
/// the window, and returns the replicas to run with the pruned history.
pub fn stabilize(
    history: &[Recommendation],
    recommendation: i32,
    now_s: i64,
    spec: &AutoscalingSpec,
) -> (i32, Vec<Recommendation>) {
    let window = spec.scale_down_stabilization_seconds.max(0);
    let mut kept: Vec<Recommendation> = history
        .iter()
        .filter(|r| now_s - r.at < window)
        .cloned()
        .collect();
    kept.push(Recommendation {
        at: now_s,
        replicas: recommendation,
    });
    let desired = kept
        .iter()
        .map(|r| r.replicas)
        .max()
        .unwrap_or(recommendation);
    // Keep the history short: only entries that can still matter.
    kept.retain(|r| r.at == now_s || r.replicas > recommendation);
    (desired, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: i64, window: i64) -> AutoscalingSpec {
        AutoscalingSpec {
            enabled: true,
            min_replicas: min,
            max_replicas: max,
            target_connections_per_pod: target,
            scale_down_stabilization_seconds: window,
        }
    }

    #[test]
    fn recommendations_follow_connections_within_bounds() {
        let s = spec(2, 10, 1000, 300);
        for (connections, expected) in [
            (0, 2),
            (1, 2),
            (2000, 2),
            (2001, 3),
            (5500, 6),
            (10_000, 10),
            (1_000_000, 10),
            (-5, 2),
        ] {
            assert_eq!(
                recommend(connections, &s),
                expected,
                "{connections} connections"
            );
        }
        assert_eq!(
            recommend(0, &spec(0, 5, 100, 0)),
            0,
            "min 0 allows scaling to zero"
        );
    }

    #[test]
    fn scale_up_is_immediate() {
        let s = spec(1, 10, 100, 300);
        let history = vec![Recommendation {
            at: 100,
            replicas: 2,
        }];
        let (desired, _) = stabilize(&history, 7, 110, &s);
        assert_eq!(desired, 7);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let s = spec(1, 10, 100, 300);
        let history = vec![Recommendation {
            at: 1000,
            replicas: 8,
        }];
        // Inside the window the earlier, higher recommendation holds.
        let (desired, history) = stabilize(&history, 3, 1100, &s);
        assert_eq!(desired, 8);
        let (desired, history) = stabilize(&history, 3, 1299, &s);
        assert_eq!(desired, 8);
        // Once it has aged out, the lower one applies.
        let (desired, history) = stabilize(&history, 3, 1300, &s);
        assert_eq!(desired, 3);
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn a_zero_window_scales_down_at_once() {
        let s = spec(1, 10, 100, 0);
        let history = vec![Recommendation {
            at: 10,
            replicas: 9,
        }];
        assert_eq!(stabilize(&history, 2, 10, &s).0, 2);
    }
}
