//! The leader steps down when its Lease may have run out: a scenario test
//! against a mocked Kubernetes API that serves the Lease (renewed, then not;
//! or taken over by another replica). Timings are scaled down to
//! milliseconds; the operator's are seconds (`leader::RENEW_DEADLINE`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use operator::leader::LeaseWatchdog;
use serde_json::json;

/// The Lease as the API server holds it.
struct LeaseState {
    holder: String,
    /// Renewals so far; each gives a new renewTime.
    renewals: u32,
}

fn serve(lease: Arc<Mutex<LeaseState>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/chat/leases/chat-operator"
            );
            let body = {
                let l = lease.lock().unwrap();
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "chat-operator", "namespace": "chat"},
                       "spec": {"holderIdentity": l.holder, "leaseDurationSeconds": 20,
                                "renewTime": format!("2026-12-02T05:00:{:02}.000000Z", l.renewals % 60)}})
            };
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, "chat")
}

const POLL: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_leader_whose_renewals_stop_steps_down_within_the_deadline() {
    let lease = Arc::new(Mutex::new(LeaseState {
        holder: "operator-a".into(),
        renewals: 0,
    }));
    let watchdog = LeaseWatchdog::new(serve(lease.clone()), "chat", "chat-operator", "operator-a")
        .with_timing(POLL, DEADLINE);
    let started = Instant::now();
    let lost = tokio::spawn(async move { watchdog.lost().await });
    // Renewed every 150 ms for a second: still leader.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        lease.lock().unwrap().renewals += 1;
    }
    assert!(!lost.is_finished(), "stepped down although renewed");
    // The renewals stop (the API server is unreachable for the lease
    // manager, which only logs it): gone within the deadline.
    let last_renewal = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("stepped down")
        .unwrap();
    let after = last_renewal.elapsed();
    assert!(reason.contains("no renewal"), "{reason}");
    assert!(
        after >= DEADLINE - POLL && after < DEADLINE + 4 * POLL,
        "stepped down {after:?} after the last renewal ({:?} in)",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_leader_steps_down_when_another_replica_holds_the_lease() {
    let lease = Arc::new(Mutex::new(LeaseState {
        holder: "operator-a".into(),
        renewals: 0,
    }));
    let watchdog = LeaseWatchdog::new(serve(lease.clone()), "chat", "chat-operator", "operator-a")
        .with_timing(POLL, Duration::from_secs(60));
    let lost = tokio::spawn(async move { watchdog.lost().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!lost.is_finished());
    lease.lock().unwrap().holder = "operator-b".into();
    let reason = tokio::time::timeout(Duration::from_secs(2), lost)
        .await
        .expect("stepped down")
        .unwrap();
    assert!(reason.contains("operator-b"), "{reason}");
}
