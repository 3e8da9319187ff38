//! The nodes of the test Redis Cluster, for fault injection: each found by
//! asking it (`INFO server`) for its process and config file, so a cluster
//! on other ports (`REDIS_CLUSTER_BASE_PORT`) or in another directory is the
//! one acted on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::redis_required;

/// One node of the test Redis Cluster: its process, to signal, and its
/// config file, to restart it.
#[derive(Debug, Clone)]
pub struct RedisNode {
    pub host: String,
    pub port: u16,
    pub pid: u32,
    pub config_file: PathBuf,
}

impl RedisNode {
    /// The nodes named by `redis_urls` (comma-separated). `None` (after a
    /// notice) when a node does not answer or is not a process on this
    /// machine; with `CHAT_TEST_REQUIRE_REDIS=1` that is a failure instead
    /// of a skip.
    pub fn all(redis_urls: &str) -> Option<Vec<RedisNode>> {
        let mut nodes = Vec::new();
        for url in redis_urls.split(',') {
            match Self::find(url) {
                Ok(node) => nodes.push(node),
                Err(why) => return missing(&why),
            }
        }
        Some(nodes)
    }

    fn find(url: &str) -> Result<RedisNode, String> {
        let address = url.trim().trim_start_matches("redis://");
        let address = address.rsplit('@').next().unwrap_or(address);
        let address = address.split('/').next().unwrap_or(address);
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("cannot read host:port in {url}"))?;
        let mut node = RedisNode {
            host,
            port,
            pid: 0,
            config_file: PathBuf::new(),
        };
        let info = node.cli(&["info", "server"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        let (Some(pid), Some(config_file)) = (
            field("process_id").and_then(|p| p.parse().ok()),
            field("config_file").filter(|f| !f.is_empty()),
        ) else {
            return Err(format!("{url} did not tell its pid and config file"));
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!(
                "{url} (pid {pid}) is not a process on this machine"
            ));
        }
        node.pid = pid;
        node.config_file = PathBuf::from(config_file);
        Ok(node)
    }

    /// `redis-cli` against this node; its output (empty if it is down).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends a signal (`-KILL`, `-STOP`, `-CONT`) to the node's process.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(
            status.success(),
            "kill {sig} {} (redis on {}) failed: {status}",
            self.pid,
            self.port
        );
    }

    /// Starts the node again from its config file (as a supervisor would
    /// after a crash); it rejoins the cluster, as a replica if it was a
    /// master that failed over. Its new pid is read back.
    pub fn restart(&mut self) {
        let status = std::process::Command::new("redis-server")
            .arg(&self.config_file)
            .current_dir(self.config_file.parent().expect("the node's directory"))
            .status()
            .unwrap_or_else(|e| panic!("running redis-server: {e}"));
        assert!(
            status.success(),
            "restarting the redis node on {}",
            self.port
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(again) = Self::find(&format!("{}:{}", self.host, self.port)) {
                self.pid = again.pid;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis on {} did not come back",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the master serving `key`'s slot, from this node's view
    /// of the cluster.
    pub fn master_port_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = self.cli(&["cluster", "keyslot", key]).trim().parse().ok()?;
        self.cli(&["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok())
    }
}

/// Whether the cluster is whole again: every node answers, reports
/// `cluster_state:ok`, and every master has a linked replica (so an
/// acknowledged message survives the next fault).
pub fn cluster_is_whole(nodes: &[RedisNode]) -> bool {
    let mut masters = 0;
    for node in nodes {
        if !node.cli(&["cluster", "info"]).contains("cluster_state:ok") {
            return false;
        }
        let replication = node.cli(&["info", "replication"]);
        if replication.lines().any(|l| l.trim() == "role:master") {
            masters += 1;
            let linked = replication
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if linked == 0 {
                return false;
            }
        } else if !replication
            .lines()
            .any(|l| l.trim() == "master_link_status:up")
        {
            return false;
        }
    }
    masters * 2 == nodes.len()
}

fn missing<T>(why: &str) -> Option<T> {
    assert!(
        !redis_required(),
        "CHAT_TEST_REQUIRE_REDIS=1 but the Redis fault test cannot act on the cluster: {why}"
    );
    println!("[redis] skipped: {why}");
    None
}
