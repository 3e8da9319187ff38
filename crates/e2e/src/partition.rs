//! Network partitions between the project's own processes on this machine,
//! made with packet filtering: each server process that a test may cut off
//! runs as a user id of its own, and iptables' `owner` match drops the
//! packets it sends (to Redis, or to its peers) and the packets its peers
//! send to it, while the test's own clients (root) still reach it. Only
//! loopback traffic on the test's own ports is touched, in a chain of this
//! process's own that is removed when the [`Partitions`] is dropped.
//!
//! Needs root and `iptables` (scripts/test.sh installs it); without them
//! [`Partitions::new`] says why and tests skip partition faults.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every user id a partitionable cluster's servers run as.
const SERVER_UIDS: &str = "64200-64999";

/// The user ids of one partitionable cluster's servers: its own block of
/// ten, so that clusters of tests running at the same time are cut off
/// independently.
#[derive(Debug, Clone, Copy)]
pub struct ServerUids {
    base: u32,
}

impl ServerUids {
    pub fn new() -> ServerUids {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let block = NEXT.fetch_add(1, Ordering::Relaxed) % 80;
        ServerUids {
            base: 64_200 + 10 * block,
        }
    }

    /// Chat server `index` (0..9) of the cluster.
    pub fn chat(&self, index: usize) -> u32 {
        assert!(
            index < 9,
            "at most 9 chat servers per partitionable cluster"
        );
        self.base + index as u32
    }

    /// The cluster's API servers.
    pub fn api(&self) -> u32 {
        self.base + 9
    }
}

impl Default for ServerUids {
    fn default() -> Self {
        Self::new()
    }
}

/// Owns one iptables chain, jumped to from `OUTPUT`.
pub struct Partitions {
    chain: String,
}

impl Partitions {
    /// `Err` says why partitions cannot be made here (not root, no
    /// iptables, no owner match).
    pub fn new() -> Result<Partitions, String> {
        // /proc/self belongs to the effective user.
        let euid = std::fs::metadata("/proc/self").map(|m| m.uid());
        if euid.map_err(|e| format!("reading /proc/self: {e}"))? != 0 {
            return Err("not root".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let chain = format!("CHAT-E2E-{}-{n}", std::process::id());
        let partitions = Partitions { chain };
        iptables(&["-N", &partitions.chain])?;
        if let Err(e) = iptables(&["-I", "OUTPUT", "-o", "lo", "-j", &partitions.chain]) {
            let _ = iptables(&["-X", &partitions.chain]);
            return Err(e);
        }
        Ok(partitions)
    }

    /// [`Partitions::new`] for a test: `None` (after saying why) where
    /// partitions cannot be made, and the test skips them.
    pub fn for_test(test: &str) -> Option<Partitions> {
        match Partitions::new() {
            Ok(p) => Some(p),
            Err(why) => {
                println!("[{test}] no partitions: {why}");
                None
            }
        }
    }

    /// Cuts the process running as `uid` off from the Redis nodes on
    /// `redis_ports`: nothing it sends them arrives.
    pub fn cut_from_redis(&self, uid: u32, redis_ports: &[u16]) {
        self.drop_sent(&uid.to_string(), redis_ports);
    }

    /// Cuts the chat server running as `uid` and listening on `port` off
    /// from the other servers (chat and API, all listening on
    /// `peer_ports`): nothing it sends them arrives, and nothing they send
    /// to its port arrives. Clients (not running as a server uid) still
    /// reach it.
    pub fn cut_from_peers(&self, uid: u32, port: u16, peer_ports: &[u16]) {
        if !peer_ports.is_empty() {
            self.drop_sent(&uid.to_string(), peer_ports);
        }
        self.drop_sent(SERVER_UIDS, &[port]);
    }

    /// Cuts one direction of the links of the process running as `uid`:
    /// nothing it sends to `ports` arrives (what they send it still does).
    pub fn cut_sends_to(&self, uid: u32, ports: &[u16]) {
        self.drop_sent(&uid.to_string(), ports);
    }

    /// Ends every partition.
    pub fn heal(&self) {
        iptables(&["-F", &self.chain]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Drops TCP packets sent by processes of `uids` (one or a range) to
    /// any of `ports`.
    fn drop_sent(&self, uids: &str, ports: &[u16]) {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        #[rustfmt::skip]
        let rule = [
            "-A", &self.chain, "-p", "tcp",
            "-m", "multiport", "--dports", &ports,
            "-m", "owner", "--uid-owner", uids,
            "-j", "DROP",
        ];
        iptables(&rule).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-o", "lo", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("running iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
