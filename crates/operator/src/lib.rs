//! The ChatCluster operator: runs, scales, registers and drains chat
//! servers. See `docs/kubernetes.md`.

pub mod crd;
