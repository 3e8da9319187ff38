//! Scale-down without dropping anyone: which pods to drain, and when the
//! StatefulSet may shrink. Pure, so every step is table-tested.
//!
//! A StatefulSet removes its highest ordinals first, so the pods that will
//! go are known in advance: `name-{desired} .. name-{current-1}`. Each is
//! asked to drain (its clients get `reconnect` and move to the others); the
//! StatefulSet shrinks only when every one of them has no connections left
//! or has been draining for the drain timeout.

use std::collections::BTreeMap;

use crate::crd::DrainStatus;

/// What the operator knows of one chat server pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodLoad {
    /// Still reporting health (absent once drained and gone from the registry).
    pub reporting: bool,
    pub draining: bool,
    pub connections: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalePlan {
    /// Replicas to write into the StatefulSet now.
    pub statefulset_replicas: i32,
    /// Pods to ask to drain now: leaving pods that report and are not
    /// draining yet. A pod asked before whose drain did not take (refused,
    /// or it had no IP yet) is asked again; the drain endpoint is
    /// idempotent. Its timeout runs from the first attempt regardless.
    pub start_draining: Vec<String>,
    /// Drain records to keep in status.
    pub draining: Vec<DrainStatus>,
    /// Pods drained earlier but wanted again (scale-up during a drain):
    /// delete them so the StatefulSet recreates them fresh.
    pub recycle: Vec<String>,
    /// True while a drain is in progress (requeue soon).
    pub waiting: bool,
    /// Leaving pods removed now although they still held clients: their
    /// drain ran out of time (those clients are cut off and reconnect).
    pub cut_short: Vec<String>,
}

pub fn pod_name(cluster: &str, ordinal: i32) -> String {
    format!("{cluster}-{ordinal}")
}

pub fn plan(
    cluster: &str,
    current: Option<i32>,
    desired: i32,
    loads: &BTreeMap<String, PodLoad>,
    draining: &[DrainStatus],
    now_s: i64,
    drain_timeout_s: i64,
) -> ScalePlan {
    let current = current.unwrap_or(desired);
    let leaving: Vec<String> = (desired..current).map(|i| pod_name(cluster, i)).collect();
    // Pods drained for a scale-down that no longer happens.
    let recycle: Vec<String> = draining
        .iter()
        .filter(|d| !leaving.contains(&d.pod))
        .filter(|d| ordinal(cluster, &d.pod).is_some_and(|o| o < desired.min(current)))
        .map(|d| d.pod.clone())
        .collect();
    if desired >= current {
        return ScalePlan {
            statefulset_replicas: desired,
            start_draining: Vec::new(),
            draining: Vec::new(),
            recycle,
            waiting: false,
            cut_short: Vec::new(),
        };
    }
    let mut records = Vec::new();
    let mut start_draining = Vec::new();
    let mut all_done = true;
    let mut cut_short = Vec::new();
    for pod in &leaving {
        let since = draining.iter().find(|d| &d.pod == pod).map(|d| d.since);
        let load = loads.get(pod).cloned().unwrap_or_default();
        if load.reporting && !load.draining {
            start_draining.push(pod.clone());
        }
        let recorded = draining.iter().find(|d| &d.pod == pod);
        let since = since.unwrap_or(now_s);
        let empty = !load.reporting || (load.draining && load.connections == 0);
        let timed_out = now_s - since >= drain_timeout_s;
        if !(empty || timed_out) {
            all_done = false;
        }
        if timed_out && !empty {
            cut_short.push(pod.clone());
        }
        records.push(DrainStatus {
            pod: pod.clone(),
            since,
            uid: recorded.and_then(|d| d.uid.clone()),
        });
    }
    if all_done {
        ScalePlan {
            statefulset_replicas: desired,
            start_draining: Vec::new(),
            draining: Vec::new(),
            recycle,
            waiting: false,
            cut_short,
        }
    } else {
        ScalePlan {
            statefulset_replicas: current,
            start_draining,
            draining: records,
            recycle,
            waiting: true,
            cut_short: Vec::new(),
        }
    }
}

fn ordinal(cluster: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(entries: &[(&str, bool, bool, i64)]) -> BTreeMap<String, PodLoad> {
        entries
            .iter()
            .map(|(pod, reporting, draining, connections)| {
                (
                    pod.to_string(),
                    PodLoad {
                        reporting: *reporting,
                        draining: *draining,
                        connections: *connections,
                    },
                )
            })
            .collect()
    }

    fn record(pod: &str, since: i64) -> DrainStatus {
        DrainStatus {
            pod: pod.into(),
            since,
            uid: None,
        }
    }

    #[test]
    fn scale_up_and_steady_state_apply_directly() {
        let p = plan("chat", Some(2), 4, &BTreeMap::new(), &[], 100, 30);
        assert_eq!(p.statefulset_replicas, 4);
        assert!(!p.waiting && p.start_draining.is_empty());
        let p = plan("chat", None, 3, &BTreeMap::new(), &[], 100, 30);
        assert_eq!(p.statefulset_replicas, 3);
    }

    #[test]
    fn scale_down_drains_the_highest_ordinals_first() {
        let l = loads(&[
            ("chat-0", true, false, 10),
            ("chat-1", true, false, 10),
            ("chat-2", true, false, 7),
            ("chat-3", true, false, 5),
        ]);
        let p = plan("chat", Some(4), 2, &l, &[], 100, 30);
        assert_eq!(
            p.statefulset_replicas, 4,
            "nothing removed before the drain"
        );
        assert_eq!(p.start_draining, vec!["chat-2", "chat-3"]);
        assert_eq!(
            p.draining,
            vec![record("chat-2", 100), record("chat-3", 100)]
        );
        assert!(p.waiting);
    }

    #[test]
    fn the_statefulset_shrinks_once_leaving_pods_are_empty() {
        let drains = [record("chat-2", 100), record("chat-3", 100)];
        // chat-2 still has clients: wait, and do not ask again.
        let l = loads(&[("chat-2", true, true, 3), ("chat-3", true, true, 0)]);
        let p = plan("chat", Some(4), 2, &l, &drains, 105, 30);
        assert_eq!(p.statefulset_replicas, 4);
        assert!(p.start_draining.is_empty());
        assert!(p.waiting);
        // Both empty (chat-3 already left the registry): shrink.
        let l = loads(&[("chat-2", true, true, 0)]);
        let p = plan("chat", Some(4), 2, &l, &drains, 110, 30);
        assert_eq!(p.statefulset_replicas, 2);
        assert!(p.draining.is_empty() && !p.waiting);
    }

    #[test]
    fn a_leaving_pod_whose_drain_did_not_take_is_asked_again() {
        let drains = [record("chat-1", 100)];
        let l = loads(&[("chat-1", true, false, 9)]);
        let p = plan("chat", Some(2), 1, &l, &drains, 104, 30);
        assert_eq!(p.start_draining, vec!["chat-1"]);
        assert_eq!(p.draining, drains, "the timeout still runs from 100");
    }

    #[test]
    fn the_drain_timeout_bounds_the_wait() {
        let drains = [record("chat-1", 100)];
        let l = loads(&[("chat-1", true, true, 50)]);
        assert_eq!(
            plan("chat", Some(2), 1, &l, &drains, 129, 30).statefulset_replicas,
            2
        );
        let cut = plan("chat", Some(2), 1, &l, &drains, 130, 30);
        assert_eq!(cut.statefulset_replicas, 1);
        assert_eq!(cut.cut_short, vec!["chat-1"], "50 clients were still on it");
        // An empty pod is not cut short, timed out or not.
        let empty = loads(&[("chat-1", true, true, 0)]);
        let done = plan("chat", Some(2), 1, &empty, &drains, 130, 30);
        assert!(done.cut_short.is_empty());
    }

    #[test]
    fn a_pod_without_health_reports_needs_no_drain() {
        let p = plan("chat", Some(3), 2, &BTreeMap::new(), &[], 100, 30);
        assert_eq!(p.statefulset_replicas, 2);
        assert!(p.start_draining.is_empty());
    }

    #[test]
    fn scale_up_during_a_drain_recycles_the_drained_pods() {
        let drains = [record("chat-2", 100)];
        let l = loads(&[("chat-2", true, true, 0)]);
        let p = plan("chat", Some(3), 4, &l, &drains, 105, 30);
        assert_eq!(p.statefulset_replicas, 4);
        assert_eq!(p.recycle, vec!["chat-2"]);
        assert!(p.draining.is_empty());
    }
}
