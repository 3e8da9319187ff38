//! The ChatCluster operator: runs, scales, registers and drains chat
//! servers. See `docs/kubernetes.md`.
//!
//! - [`crd`]: the custom resource and its generated CRD.
//! - [`autoscale`], [`scaledown`]: the decisions, as pure functions.
//! - [`resources`]: the owned objects (StatefulSet, Service, PDB).
//! - [`expose`]: per-pod Services and HTTPRoutes or an Ingress, for
//!   clients outside the cluster.
//! - [`fleet`]: the chat servers' side (health in Redis, drain requests,
//!   endpoint registration).
//! - [`controller`]: reconcile, status, events.
//! - [`watches`]: what triggers a reconcile (and what must not).
//! - [`leader`]: stepping down when the leader Lease may have run out.

pub mod autoscale;
pub mod controller;
pub mod crd;
pub mod expose;
pub mod fleet;
pub mod leader;
pub mod resources;
pub mod scaledown;
pub mod watches;
