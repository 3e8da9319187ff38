//! Leader election's missing half: noticing that this replica may no
//! longer be the leader.
//!
//! kube-lease-manager 0.13 renews the Lease and reports when another
//! replica takes it, but a renewal that fails (API server unreachable, a
//! partition) is only logged, so a replica whose lease has run out would
//! keep reconciling beside the new leader. [`LeaseWatchdog`] reads the Lease
//! itself and gives up once it has not seen a renewal for
//! [`RENEW_DEADLINE`] (shorter than the lease duration, so it stops before
//! anyone else may take over), or sees another holder. The operator then
//! exits and is restarted as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// How long the Lease is valid after a renewal (others may take it then).
pub const LEASE_DURATION_S: u64 = 20;
/// The holder renews this long before the lease would expire, so every
/// `LEASE_DURATION_S - LEASE_GRACE_S` = 12 s.
pub const LEASE_GRACE_S: u64 = 8;
/// A leader that has not seen its renewal for this long stops: with the
/// Lease read every [`LEASE_POLL_INTERVAL`], it is gone before the lease
/// can have expired for the others.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(15);
pub const LEASE_POLL_INTERVAL: Duration = Duration::from_secs(1);

pub struct LeaseWatchdog {
    leases: Api<Lease>,
    name: String,
    identity: String,
    poll_interval: Duration,
    renew_deadline: Duration,
}

impl LeaseWatchdog {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseWatchdog {
            leases: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            poll_interval: LEASE_POLL_INTERVAL,
            renew_deadline: RENEW_DEADLINE,
        }
    }

    /// Other timings than [`LEASE_POLL_INTERVAL`] and [`RENEW_DEADLINE`]
    /// (tests run them in milliseconds).
    pub fn with_timing(mut self, poll_interval: Duration, renew_deadline: Duration) -> Self {
        self.poll_interval = poll_interval;
        self.renew_deadline = renew_deadline;
        self
    }

    /// Returns, with the reason, once this replica can no longer be sure it
    /// holds the Lease. Call it when leadership was just acquired.
    pub async fn lost(&self) -> String {
        let mut confirmed_at = tokio::time::Instant::now();
        let mut last_renewal: Option<String> = None;
        loop {
            tokio::time::sleep(self.poll_interval).await;
            match self.leases.get(&self.name).await {
                Ok(lease) => {
                    let spec = lease.spec.unwrap_or_default();
                    if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                        return format!(
                            "the Lease {} is now held by {}",
                            self.name,
                            spec.holder_identity.as_deref().unwrap_or("nobody")
                        );
                    }
                    let renewal = spec.renew_time.map(|t| t.0.to_string());
                    if renewal.is_some() && renewal != last_renewal {
                        last_renewal = renewal;
                        confirmed_at = tokio::time::Instant::now();
                    }
                }
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "cannot read the Lease"),
            }
            if confirmed_at.elapsed() >= self.renew_deadline {
                return format!(
                    "no renewal of the Lease {} seen for {:?}",
                    self.name, self.renew_deadline
                );
            }
        }
    }
}
