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
//! (its writes so far stay) is never run again: [`Outcome::Failed`]. The
//! slot owners come from [`SlotMap`], read again after a redirect too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, Value};
use tokio::sync::{mpsc, oneshot};

use crate::redis_store::RedisAccess;
use crate::slot_owners::{Node, SlotMap};

/// Most appends in one pipeline: bounds the reply a batch waits for, and
/// the time the first append in it waits for the last.
const MAX_BATCH: usize = 256;
/// Appends queued for one master beyond the batch in flight.
const QUEUE_LEN: usize = 4096;
/// Connect and response timeouts of the per-master connections (a `WAIT`
/// returns within the replica ack timeout, well below this).
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

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
    slots: Arc<SlotMap>,
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
        slots: Arc<SlotMap>,
    ) -> redis::RedisResult<Arc<Self>> {
        use redis::IntoConnectionInfo;
        Ok(Arc::new(GroupCommit {
            counters: Arc::default(),
            slots,
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
        let node = self.slots.owner_of(slot_key, cluster);
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
            self.slots.refresh(cluster);
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
}
