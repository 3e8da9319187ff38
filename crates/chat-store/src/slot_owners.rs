//! Which Redis master serves each hash slot, as this process last read it
//! (`CLUSTER SLOTS`). Group commit sends each batch to the master of its
//! appends' slot, and the catch-up reads the rooms of one master in one
//! script: both go around the cluster client's routing, one request per
//! master instead of one per key, and fall back to it when the map is
//! stale (a redirect, a key not served there).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::Value;

/// How old the map may get before a lookup reads it again.
const MAX_AGE: Duration = Duration::from_secs(5);

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
pub(crate) type Node = Arc<(String, u16)>;

/// Which master serves each slot range.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SlotOwners {
    ranges: Vec<(u16, u16, Node)>,
}

impl SlotOwners {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id,
    /// ...], replicas...], ...]`. Ranges without a usable master are left
    /// out (their appends run alone).
    pub(crate) fn parse(reply: &Value) -> SlotOwners {
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

    pub(crate) fn owner(&self, slot: u16) -> Option<&Node> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(node)
    }
}

/// The slot owners, read again in the background when older than
/// [`MAX_AGE`] or when a caller found them stale.
pub(crate) struct SlotMap {
    owners: RwLock<(Arc<SlotOwners>, Option<Instant>)>,
    refreshing: AtomicBool,
}

impl SlotMap {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(SlotMap {
            owners: RwLock::new((Arc::new(SlotOwners::default()), None)),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The owners as last read (none before the first read), reading them
    /// again in the background if they are old.
    pub(crate) fn owners(self: &Arc<Self>, cluster: &ClusterConnection) -> Arc<SlotOwners> {
        let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
        if owners.1.is_none_or(|at| at.elapsed() > MAX_AGE) {
            self.refresh(cluster);
        }
        owners.0.clone()
    }

    /// The master of `key`'s slot, if known.
    pub(crate) fn owner_of(
        self: &Arc<Self>,
        key: &str,
        cluster: &ClusterConnection,
    ) -> Option<Node> {
        self.owners(cluster).owner(key_slot(key)).cloned()
    }

    /// Reads the owners again in the background (one read at a time).
    pub(crate) fn refresh(self: &Arc<Self>, cluster: &ClusterConnection) {
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
                Ok(reply) => this.set(&reply),
                Err(e) => tracing::debug!(error = %e, "CLUSTER SLOTS failed"),
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Replaces the owners as if just read from `reply` (tests: a stale map).
    pub(crate) fn set(&self, reply: &Value) {
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) =
            (Arc::new(SlotOwners::parse(reply)), Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
