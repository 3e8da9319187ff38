//! Group commit of message appends (issue 13).
//!
//! Every append is a script followed by `WAIT`, and a `WAIT` costs the
//! master a round trip to its replicas (`REPLCONF GETACK`) and blocks the
//! connection it came on until they answer. Under load that round trip,
//! once per message, is where Redis's CPU and the throughput go. Here the
//! appends bound for one master share it: while one batch is out, the
//! appends that arrive wait, and go together as the next pipeline, with one
//! `WAIT` after all of their scripts. A lone append still goes at once, so
//! latency at low load is unchanged; an ack still means a replica has the
//! message (the `WAIT` covers every write before it on that connection).
//!
//! A pipeline may only be re-sent whole if none of it ran, and the cluster
//! client re-sends a pipeline whole when any reply is a redirect, which
//! would run the other scripts twice. So batches go over plain connections
//! of our own, one per master, that never retry: an append whose script did
//! not run there (a redirect after a failover or resharding, a script not
//! loaded yet, a connection that could not be made) is answered
//! [`Outcome::RunAlone`], and the caller runs it through the cluster
//! client, which handles all of that. A script that ran and failed inside
//! (its writes so far stay) is never run again: [`Outcome::Failed`]. The slot owners come from
//! `CLUSTER SLOTS`, read again every few seconds and after a redirect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, Value};
use tokio::sync::{mpsc, oneshot};

use crate::redis_store::RedisAccess;

/// Most appends in one pipeline: bounds the reply a batch waits for, and
/// the time the first append in it waits for the last.
const MAX_BATCH: usize = 256;
/// Appends queued for one master beyond the batch in flight.
const QUEUE_LEN: usize = 4096;
/// How old the slot owners may get before an append reads them again.
const SLOTS_MAX_AGE: Duration = Duration::from_secs(5);
/// Connect and response timeouts of the per-master connections (a `WAIT`
/// returns within the replica ack timeout, well below this).
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis Cluster's hash slot of `key`: CRC16 (XMODEM) of its hash tag, or
/// of the whole key without one, modulo 16384.
pub(crate) fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

/// A master's address as `CLUSTER SLOTS` gives it (shared: looked up per
/// append, so cloning it must not allocate).
type Node = Arc<(String, u16)>;

/// Which master serves each slot range.
#[derive(Debug, Default, PartialEq)]
struct SlotOwners {
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotOwners {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id,
    /// ...], replicas...], ...]`. Ranges without a usable master are left
    /// out (their appends run alone).
    fn parse(reply: &Value) -> SlotOwners {
        let Value::Array(entries) = reply else {
            return SlotOwners::default();
        };
        let int = |v: &Value| match v {
            Value::Int(n) => u16::try_from(*n).ok(),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let mut ranges: Vec<(u16, u16, Node)> = entries
            .iter()
            .filter_map(|entry| {
                let Value::Array(fields) = entry else {
                    return None;
                };
                let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
                let Value::Array(master) = fields.get(2)? else {
                    return None;
                };
                let host = text(master.first()?)?;
                let port = int(master.get(1)?)?;
                (!host.is_empty()).then(|| (start, end, Arc::new((host, port))))
            })
            .collect();
        ranges.sort_by_key(|r| r.0);
        SlotOwners { ranges }
    }

    fn owner(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(node)
    }
}

/// How one append fared in a batch.
pub(crate) enum Outcome {
    /// The script ran: its reply, and how many replicas confirmed the
    /// batch (`u32::MAX` when none were asked for).
    Ran { script: Value, replicas: u32 },
    /// The script did not run here: run it through the cluster client.
    RunAlone,
    /// The script was sent and no answer came (the connection failed, or
    /// the batch's reply was lost): it may or may not have run, as when a
    /// single append's connection fails. Never run again by us.
    Failed(redis::RedisError),
}

struct Pending {
    /// Taken into the batch's pipeline when it is sent (no copy).
    script: Option<redis::Cmd>,
    reply: oneshot::Sender<Outcome>,
}

/// What an append whose answer never came is told: once the worker has
/// it, it may have been sent, so running it again could store it twice.
fn no_answer() -> Outcome {
    Outcome::Failed(redis::RedisError::from((
        redis::ErrorKind::Io,
        "group commit: no answer for a batched append",
    )))
}

/// The `WAIT` after each batch.
#[derive(Clone, Copy)]
pub(crate) struct ReplicaAcks {
    pub wanted: u32,
    pub timeout_ms: u64,
}

/// What group commit did so far (tests and benchmarks read it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Pipelines sent, and the appends sent in them (their scripts ran, or
    /// the connection failed with them out: the client was told
    /// `unavailable`).
    pub batches: u64,
    pub batched: u64,
    /// Appends handed back to run alone through the cluster client.
    pub alone: u64,
}

/// The counters a process exports from [`GroupCommitStats`] (name after
/// the process's prefix, help, value).
#[allow(clippy::type_complexity)]
pub const GROUP_COMMIT_COUNTERS: [(&str, &str, fn(&GroupCommitStats) -> u64); 3] = [
    (
        "append_batches_total",
        "Pipelines of appends sent to a Redis master, each with one WAIT.",
        |s| s.batches,
    ),
    (
        "appends_batched_total",
        "Appends sent in such a pipeline.",
        |s| s.batched,
    ),
    (
        "appends_alone_total",
        "Appends run alone through the cluster client (a redirect, no slot owner known yet, a full queue).",
        |s| s.alone,
    ),
];

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    batched: AtomicU64,
    alone: AtomicU64,
}

pub(crate) struct GroupCommit {
    counters: Arc<Counters>,
    owners: RwLock<(Arc<SlotOwners>, Option<Instant>)>,
    refreshing: Arc<AtomicBool>,
    masters: Mutex<HashMap<Node, mpsc::Sender<Pending>>>,
    /// How to connect to one node: the seed URL's settings and `access`.
    seed: ConnectionInfo,
    access: RedisAccess,
    acks: ReplicaAcks,
}

impl GroupCommit {
    pub(crate) fn new(
        seed_url: &str,
        access: &RedisAccess,
        acks: ReplicaAcks,
    ) -> redis::RedisResult<Arc<Self>> {
        use redis::IntoConnectionInfo;
        Ok(Arc::new(GroupCommit {
            counters: Arc::default(),
            owners: RwLock::new((Arc::new(SlotOwners::default()), None)),
            refreshing: Arc::new(AtomicBool::new(false)),
            masters: Mutex::new(HashMap::new()),
            seed: seed_url.into_connection_info()?,
            access: access.clone(),
            acks,
        }))
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        let c = &self.counters;
        GroupCommitStats {
            batches: c.batches.load(Ordering::Relaxed),
            batched: c.batched.load(Ordering::Relaxed),
            alone: c.alone.load(Ordering::Relaxed),
        }
    }

    /// Replaces the slot owners as if just read (tests: a stale map).
    #[cfg(test)]
    pub(crate) fn set_owners(&self, reply: &Value) {
        *self.owners.write().unwrap() = (Arc::new(SlotOwners::parse(reply)), Some(Instant::now()));
    }

    /// Runs `script` (an `EVALSHA` on the keys of `slot_key`'s slot) in the
    /// next batch for its master. On [`Outcome::RunAlone`] the caller builds
    /// the script again: keeping a copy for that rare case would cost a
    /// copy of every append.
    pub(crate) async fn run(
        self: &Arc<Self>,
        script: redis::Cmd,
        slot_key: &str,
        cluster: &ClusterConnection,
    ) -> Outcome {
        let node = {
            let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
            if owners.1.is_none_or(|at| at.elapsed() > SLOTS_MAX_AGE) {
                self.refresh_owners(cluster);
            }
            owners.0.owner(key_slot(slot_key)).cloned()
        };
        let outcome = match node {
            Some(node) => self.run_on(node, script).await,
            None => Outcome::RunAlone,
        };
        match outcome {
            Outcome::RunAlone => self.counters.alone.fetch_add(1, Ordering::Relaxed),
            _ => self.counters.batched.fetch_add(1, Ordering::Relaxed),
        };
        if !matches!(outcome, Outcome::Ran { .. }) {
            // Most often a redirect, a master gone, or no owner known yet:
            // read them again.
            self.refresh_owners(cluster);
        }
        outcome
    }

    async fn run_on(&self, node: Node, script: redis::Cmd) -> Outcome {
        let queue = match self.queue_for(&node) {
            Ok(queue) => queue,
            Err(e) => {
                tracing::debug!(error = %e, ?node, "group commit: no client for the node");
                return Outcome::RunAlone;
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            script: Some(script),
            reply,
        };
        if queue.try_send(pending).is_err() {
            return Outcome::RunAlone; // full: this one goes alone, unsent
        }
        answer.await.unwrap_or_else(|_| no_answer())
    }

    /// Reads the slot owners again in the background (one read at a time).
    fn refresh_owners(self: &Arc<Self>, cluster: &ClusterConnection) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let mut conn = cluster.clone();
        tokio::spawn(async move {
            let reply: redis::RedisResult<Value> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(reply) => {
                    let owners = SlotOwners::parse(&reply);
                    *this.owners.write().unwrap_or_else(|p| p.into_inner()) =
                        (Arc::new(owners), Some(Instant::now()));
                }
                Err(e) => tracing::debug!(error = %e, "group commit: CLUSTER SLOTS failed"),
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    fn queue_for(&self, node: &Node) -> redis::RedisResult<mpsc::Sender<Pending>> {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = masters.get(node).filter(|q| !q.is_closed()) {
            return Ok(queue.clone());
        }
        let client = self.client_for(node)?;
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(commit_batches(client, rx, self.acks, self.counters.clone()));
        masters.insert(node.clone(), tx.clone());
        Ok(tx)
    }

    /// A client for one node, with the seed URL's scheme, credentials and
    /// TLS settings.
    fn client_for(&self, node: &Node) -> redis::RedisResult<Client> {
        let (host, port) = &**node;
        let addr = match self.seed.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        let mut settings = self.seed.redis_settings().clone();
        if let Some(username) = &self.access.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.access.password {
            settings = settings.set_password(password);
        }
        let info = self
            .seed
            .clone()
            .set_addr(addr)
            .set_redis_settings(settings);
        if self.access.ca_pem.is_some() || self.access.client_cert.is_some() {
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: self.access.client_cert.clone(),
                    root_cert: self.access.ca_pem.clone(),
                },
            )
        } else {
            Client::open(info)
        }
    }
}

/// One master's batches: waits for an append, takes every append queued
/// behind it, sends them with one `WAIT`, answers each, and repeats. The
/// appends that arrive while a batch is out form the next one.
async fn commit_batches(
    client: Client,
    mut queue: mpsc::Receiver<Pending>,
    acks: ReplicaAcks,
    counters: Arc<Counters>,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(NODE_TIMEOUT))
        .set_response_timeout(Some(NODE_TIMEOUT));
    let mut conn: Option<MultiplexedConnection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "group commit: connecting to a master failed");
                    for p in batch.drain(..) {
                        let _ = p.reply.send(Outcome::RunAlone);
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        counters.batches.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = commit(c, &mut batch, acks).await {
            // Sent, but no answer: whether each script ran is unknown.
            conn = None;
            for p in batch.drain(..) {
                let _ = p.reply.send(Outcome::Failed(e.clone()));
            }
        }
    }
}

/// Sends `batch`'s scripts and one `WAIT`, and answers each append.
async fn commit(
    conn: &mut MultiplexedConnection,
    batch: &mut Vec<Pending>,
    acks: ReplicaAcks,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for p in batch.iter_mut() {
        if let Some(script) = p.script.take() {
            pipe.add_command(script);
        }
    }
    if acks.wanted > 0 {
        pipe.cmd("WAIT").arg(acks.wanted).arg(acks.timeout_ms);
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let expected = batch.len() + usize::from(acks.wanted > 0);
    if replies.len() != expected {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "group commit: a batch's replies do not match its appends",
        )));
    }
    let replicas = if acks.wanted > 0 {
        match replies.pop() {
            Some(Value::Int(n)) => u32::try_from(n).unwrap_or(0),
            _ => 0, // an error: nothing confirmed
        }
    } else {
        u32::MAX
    };
    for (p, reply) in batch.drain(..).zip(replies) {
        let outcome = match reply {
            Value::ServerError(e) if refused_before_running(&e) => Outcome::RunAlone,
            // The script ran and failed partway (an error inside it): what
            // it wrote stays. Never run again; the client retries with its
            // client_msg_id.
            Value::ServerError(e) => Outcome::Failed(e.into()),
            script => Outcome::Ran { script, replicas },
        };
        let _ = p.reply.send(outcome);
    }
    Ok(())
}

/// Whether Redis refused a command before running any of it (a redirect,
/// a script not loaded, the cluster or the node not serving), so that
/// running it elsewhere cannot run it twice.
fn refused_before_running(e: &redis::ServerError) -> bool {
    use redis::ServerErrorKind::*;
    matches!(
        e.kind(),
        Some(
            Moved
                | Ask
                | TryAgain
                | NoScript
                | ClusterDown
                | MasterDown
                | ReadOnly
                | BusyLoading
                | CrossSlot
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(resp: &str) -> redis::ServerError {
        match redis::parse_redis_value(resp.as_bytes()) {
            Ok(Value::ServerError(e)) => e,
            other => panic!("{resp:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn only_refusals_run_again_never_scripts_that_failed_inside() {
        for refused in [
            "-MOVED 3999 127.0.0.1:7001\r\n",
            "-ASK 3999 127.0.0.1:7001\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-NOSCRIPT No matching script\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            assert!(refused_before_running(&server_error(refused)), "{refused}");
        }
        for failed_inside in [
            "-ERR Error running script (call to f_0): @user_script:62: Script attempted to access a non local key\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ] {
            assert!(!refused_before_running(&server_error(failed_inside)), "{failed_inside}");
        }
    }

    /// Values from `CLUSTER KEYSLOT` of a real Redis.
    #[test]
    fn key_slots_match_redis() {
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), 3443);
        assert_eq!(key_slot("{user1000}.followers"), 3443);
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_eq!(key_slot("foo{}{bar}"), 8363);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slot_owners_are_read_from_cluster_slots() {
        let entry = |start: i64, end: i64, port: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port + 3), bulk("id2")]),
            ])
        };
        let owners = SlotOwners::parse(&Value::Array(vec![
            entry(10923, 16383, 7002),
            entry(0, 5460, 7000),
            entry(5461, 10922, 7001),
        ]));
        let port = |slot| owners.owner(slot).map(|n| n.1);
        assert_eq!(port(0), Some(7000));
        assert_eq!(port(5460), Some(7000));
        assert_eq!(port(5461), Some(7001));
        assert_eq!(port(16383), Some(7002));
        let partial = SlotOwners::parse(&Value::Array(vec![entry(100, 200, 7000)]));
        assert_eq!(partial.owner(99), None);
        assert_eq!(partial.owner(201), None);
        assert_eq!(SlotOwners::parse(&Value::Nil), SlotOwners::default());
    }
}
