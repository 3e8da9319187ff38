//! The Redis Cluster store. Layout in [`crate::keys`].
//!
//! Operations that must be atomic run as Lua scripts on the keys of one
//! room (one hash slot): appending a message checks membership, dedups,
//! assigns the seq, stores and trims in a single step, so a message either
//! exists with its seq or not at all. Independent reads are issued
//! concurrently on the multiplexed cluster connection, which pipelines them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chat_protocol::rest::Room;
use chat_protocol::Message;
use futures_util::future::{join_all, try_join_all};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, Script};

use crate::group_commit::{GroupCommit, Outcome, ReplicaAcks};
use crate::keys;
use crate::online_cache::OnlineCache;
use crate::slot_owners::{key_slot, Node, SlotMap, SlotOwners};
use crate::{
    decode_message, Appended, MarkedRead, NewMessage, NewRoom, OnlineSession, PresenceChange,
    RoomServers, RoomView, RoomsRead, ServerHealth, ServerSnapshot, SessionAdded, SessionLocation,
    Store, StoreConfig, StoreError, StoreResult, WentOffline,
};

/// The append script: see its header for keys, arguments and replies. The
/// message is stored as Stream fields, not as JSON: the caller builds the
/// stored message from what it sent and the seq, so neither side makes or
/// parses JSON on the hot path.
const APPEND_LUA: &str = concat!(
    include_str!("lua/online_index.lua"),
    include_str!("lua/append.lua")
);

/// A room's presence audience: its index, or `None` when the room is too
/// big for presence events (see [`Store::presence_audience`]).
type Audience = Option<Vec<OnlineSession>>;

/// KEYS: members, online, seq, online version. ARGV: user, a new version
/// token, the presence audience's member cap ('' for no audience), then
/// session and index value pairs. Indexes the sessions if the user is a
/// member (the index holds members only) and returns {the room's latest
/// seq}, else {'-1'}. With a cap, the presence audience follows the seq as
/// [`PRESENCE_AUDIENCE_LUA`] answers it ('0', or '1' and the index), read
/// in the same step: announcing the user needs no second script per room.
/// Every change to a presence index writes a new version beside it in the
/// same step (see `lua/append.lua`).
const ANNOUNCE_LUA: &str = concat!(
    include_str!("lua/presence_audience.lua"),
    r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {'-1'} end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[4], ARGV[2])
local reply = {redis.call('GET', KEYS[3]) or '0'}
if ARGV[3] == '' then return reply end
for _, v in ipairs(presence_audience(KEYS[1], KEYS[2], ARGV[3])) do table.insert(reply, v) end
return reply
"#
);

/// [`ANNOUNCE_LUA`] for many rooms of one master: see its header.
const ANNOUNCE_ROOMS_LUA: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    include_str!("lua/presence_audience.lua"),
    include_str!("lua/announce_rooms.lua"),
);

/// `lua/forget_rooms.lua`: see its header.
const FORGET_ROOMS_LUA: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    include_str!("lua/presence_audience.lua"),
    include_str!("lua/forget_rooms.lua"),
);

/// Rooms a reap forgets in one step, grouped by master: about 100 per
/// master's script with three masters, a millisecond or two of the
/// node's time, so a reap does not hold a node for long.
const FORGET_ROOMS_STEP: usize = 300;

/// Users of a dead server that one reaper claims at a time: tens of
/// milliseconds of scripts, so concurrent reapers share a large server's
/// users (each then forgets its users' rooms and announces them), and few
/// claims per reap. A reaper forgets each of its users' rooms once,
/// whatever the number of its claims; a room whose users went to several
/// reapers is forgotten by each.
const REAP_CHUNK_USERS: usize = 500;

/// How long a claim on a chunk of a dead server's users holds: far longer
/// than its scripts take, so reapers arriving later skip it; short, since
/// it is also how long a chunk waits if its reaper died (a second fault)
/// and how long its users stay listed after a reap that could not unhost
/// them (the server's health record still lived): the next reaper to find
/// the claims gone tries those users again (nothing left to drop) and
/// unhosts them.
const REAP_CLAIM_TTL: Duration = Duration::from_secs(3);
/// How long a reaper's mark on a server waits for it to report.
const REAPED_MARK_TTL_MS: u64 = 60_000;
/// A claim's values: its reaper is trying the chunk's users, or has.
const CLAIM_TAKEN: &str = "taken";
const CLAIM_DONE: &str = "done";

/// Fewest of a user's rooms on one master announced with one script
/// there; fewer go one announce per room. Measured on connects (A/B,
/// docs/benchmarks.md, "A connect's rooms with one script per master"):
/// users in 20 rooms (about 7 per master) connect 1.31x faster with the
/// script, users in 5 (about 2) 0.92x, so a few rooms per master cost
/// less as one announce each.
const ANNOUNCE_SCRIPT_MIN_ROOMS: usize = 4;

/// What announcing a user in one room answered: the room's latest seq and,
/// when asked for, its presence audience; `None` when the user is not a
/// member.
type Announced = Option<(u64, Option<Audience>)>;

/// KEYS: meta, members, seq, reads. ARGV: user (may be empty). Returns {}
/// when the room does not exist, else {name, created_by, created_at,
/// member_count, is_member, last_seq, read_seq}.
const ROOM_VIEW_LUA: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'name', 'created_by', 'created_at')
if not meta[1] then return {} end
local count = redis.call('SCARD', KEYS[2])
local member = '0'
local read = '0'
if ARGV[1] ~= '' and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  member = '1'
  read = redis.call('HGET', KEYS[4], ARGV[1]) or '0'
end
local last = redis.call('GET', KEYS[3]) or '0'
return {meta[1], meta[2], meta[3], tostring(count), member, last, read}
"#;

/// KEYS: meta, members, seq, reads, online. ARGV: user, seq. Moves the
/// member's marker to min(seq, latest seq) if that is higher. Returns
/// {status} on error, else {'M:' (moved) or 'S:' (stayed) .. marker,
/// member_count, then, if moved, the presence index as HGETALL lists it}.
const MARK_READ_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'E:noroom'} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'E:notmember'} end
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local wanted = tonumber(ARGV[2])
if wanted > last then wanted = last end
local old = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local count = tostring(redis.call('SCARD', KEYS[2]))
if wanted <= old then return {'S:' .. old, count} end
redis.call('HSET', KEYS[4], ARGV[1], wanted)
local reply = redis.call('HGETALL', KEYS[5])
table.insert(reply, 1, count)
table.insert(reply, 1, 'M:' .. wanted)
return reply
"#;

/// The store's clock in ms, from Redis `TIME` (scripts replicate their
/// effects, so reading the clock in one is allowed).
const NOW_MS_LUA: &str = "local t = redis.call('TIME')
local now = tostring(t[1] * 1000 + math.floor(t[2] / 1000))";

/// KEYS: sessions, rooms (the user's). ARGV: session, server id, ttl_ms.
/// Records the session and decides, in the same step, whether the user
/// came online. Returns {'1' if first live session else '0', now_ms, the
/// number n of the user's sessions now, n pairs of session id and server
/// id, the user's room ids...}.
fn add_session_lua() -> String {
    format!(
        r#"
local before = redis.call('HLEN', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
{NOW_MS_LUA}
local sessions = redis.call('HGETALL', KEYS[1])
local reply = {{before == 0 and '1' or '0', now, tostring(#sessions / 2)}}
for _, v in ipairs(sessions) do table.insert(reply, v) end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(reply, room) end
return reply
"#
    )
}

/// Splits [`add_session_lua`]'s reply: whether the user came online, the
/// store's time, the user's sessions, their room ids.
fn split_add_session_reply(
    reply: Vec<String>,
) -> StoreResult<(bool, u64, Vec<SessionLocation>, Vec<String>)> {
    let corrupt = || StoreError::Corrupt(format!("add_session reply {reply:?}"));
    let (first, ts, n) = match &reply[..] {
        [first, ts, n, ..] => (
            first == "1",
            ts.parse::<u64>().map_err(|_| corrupt())?,
            n.parse::<usize>().map_err(|_| corrupt())?,
        ),
        _ => return Err(corrupt()),
    };
    let pairs = reply.get(3..3 + 2 * n).ok_or_else(corrupt)?;
    let sessions = pairs
        .chunks_exact(2)
        .map(|pair| SessionLocation {
            session: pair[0].clone(),
            server_id: pair[1].clone(),
        })
        .collect();
    let rooms = reply[3 + 2 * n..].to_vec();
    Ok((first, ts, sessions, rooms))
}

/// KEYS: sessions, rooms. ARGV: session. Returns {'1' if that was the
/// user's last session else '0', '1' if the user keeps a session on the
/// same chat server else '0', that server's id ('' if the session was
/// unknown), now_ms, the user's room ids...}.
fn remove_session_lua() -> String {
    format!(
        r#"
local server = redis.call('HGET', KEYS[1], ARGV[1])
local offline = '0'
local hosted = '1'
if server then
  redis.call('HDEL', KEYS[1], ARGV[1])
  local left = redis.call('HVALS', KEYS[1])
  if #left == 0 then offline = '1' end
  hosted = '0'
  for _, s in ipairs(left) do if s == server then hosted = '1' break end end
else
  server = ''
end
{NOW_MS_LUA}
local reply = redis.call('SMEMBERS', KEYS[2])
table.insert(reply, 1, now)
table.insert(reply, 1, server)
table.insert(reply, 1, hosted)
table.insert(reply, 1, offline)
return reply
"#
    )
}

/// KEYS: sessions, rooms. ARGV: server id. Drops the user's sessions on
/// that server. Returns {} if there were none, else {'1' if that left the
/// user with none else '0', now_ms, the number of sessions dropped, their
/// ids, then the user's room ids}.
fn reap_user_lua() -> String {
    format!(
        r#"
local all = redis.call('HGETALL', KEYS[1])
local removed = {{}}
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    table.insert(removed, all[i])
  end
end
if #removed == 0 then return {{}} end
{NOW_MS_LUA}
local reply = {{#removed * 2 == #all and '1' or '0', now, tostring(#removed)}}
for _, s in ipairs(removed) do table.insert(reply, s) end
for _, r in ipairs(redis.call('SMEMBERS', KEYS[2])) do table.insert(reply, r) end
return reply
"#
    )
}

/// KEYS: hosts, the legacy hosted set (of the server), the server's
/// health record. ARGV: server id, force ('1': ignore the health record),
/// how many users the server's own hosted set still has, users reaped...
/// Forgets the reaped users, and the server once it hosts nobody, unless
/// the server reported health again meanwhile (it was only cut off; it
/// rejoins `hosts` with its next health anyway).
const UNHOST_LUA: &str = r#"
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
for i = 4, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
if ARGV[3] == '0' and redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], ARGV[1]) end
return 1
"#;

/// KEYS: the server's own hosted set. ARGV: users reaped... Forgets them;
/// replies how many users it still has.
const UNHOST_OWN_LUA: &str = r#"
for i = 1, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
return redis.call('SCARD', KEYS[1])
"#;

/// KEYS: members, online. ARGV: max members. {'0'} for a larger room,
/// else {'1', then the presence index as HGETALL lists it}.
const PRESENCE_AUDIENCE_LUA: &str = concat!(
    include_str!("lua/presence_audience.lua"),
    "return presence_audience(KEYS[1], KEYS[2], ARGV[1])"
);

/// KEYS: meta, members. ARGV: name, created_by, created_at, member...
/// `joins` marks a room that records when members joined (see
/// [`JOINED_SEQ_LUA`]); `log` = 0 one whose history was always a Stream,
/// `dg` = 0 one whose dedup fields were always digests (see
/// `lua/append.lua`).
const CREATE_ROOM_LUA: &str = r#"
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'created_by', ARGV[2], 'created_at', ARGV[3], 'joins', '1', 'log', '0', 'dg', '0')
for i = 4, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return redis.call('SCARD', KEYS[2])
"#;

/// KEYS: meta, members, joined. ARGV: user. The seq at which `user`
/// joined; -1 if not a member, or if the room predates recorded joins (no
/// `joins` field in its meta). Members without an entry in a recording
/// room are those it was created with: 0.
const JOINED_SEQ_LUA: &str = r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return -1 end
local joined = redis.call('HGET', KEYS[3], ARGV[1])
if joined then return tonumber(joined) end
if redis.call('HEXISTS', KEYS[1], 'joins') == 1 then return 0 end
return -1
"#;

/// KEYS: registered, unseen. ARGV: now_ms, unseen_for_ms, then pairs of
/// registered server id and '1' if it has a health record, else '0'.
/// Starts the clock of a server without one, stops it for one with one,
/// expires a registration unseen for long enough, and drops the clocks of
/// ids no longer registered. Returns the expired ids.
const EXPIRE_REGISTRATIONS_LUA: &str = r#"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if ARGV[i + 1] == '1' then
    redis.call('HDEL', KEYS[2], id)
  else
    local since = redis.call('HGET', KEYS[2], id)
    if not since then
      redis.call('HSET', KEYS[2], id, ARGV[1])
    elseif now - tonumber(since) >= ttl then
      if redis.call('HDEL', KEYS[1], id) == 1 then table.insert(expired, id) end
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('HEXISTS', KEYS[1], id) == 0 then redis.call('HDEL', KEYS[2], id) end
end
return expired
"#;

/// KEYS: registered hash. ARGV: cluster, server ids... Replaces the
/// cluster's entries in one step.
const SET_REGISTERED_LUA: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
return #ARGV - 1
"#;

/// KEYS: meta, members, online, reads, joined, seq, online version. ARGV:
/// op ('add' or 'remove'), user, a new version token for the index. -1 if
/// no room. An added member's join seq is recorded; a removed member's
/// sessions leave the presence index (writing a new version), and their
/// read marker and join seq go, in the same step (index values are
/// `<len>:<server id><user>`).
const MEMBERSHIP_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == 'add' then
  local added = redis.call('SADD', KEYS[2], ARGV[2])
  if added == 1 then
    redis.call('HSET', KEYS[5], ARGV[2], redis.call('GET', KEYS[6]) or '0')
  end
  return added
end
local removed = redis.call('SREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
local index = redis.call('HGETALL', KEYS[3])
local withdrawn = 0
for i = 1, #index, 2 do
  local len, rest = string.match(index[i + 1], '^(%d+):(.*)$')
  if len and string.sub(rest, tonumber(len) + 1) == ARGV[2] then
    withdrawn = withdrawn + redis.call('HDEL', KEYS[3], index[i])
  end
end
if withdrawn > 0 then redis.call('SET', KEYS[7], ARGV[3]) end
return removed
"#;

/// KEYS: online, online version, members. ARGV: a new version token, the
/// presence audience's member cap ('' for no audience), then session ids.
/// Drops the sessions from the presence index, and writes a new version if
/// any was there. With a cap, returns the presence audience left as
/// [`PRESENCE_AUDIENCE_LUA`] answers it, read in the same step (the
/// "offline" event needs no second script per room); else {}.
const FORGET_ONLINE_LUA: &str = concat!(
    include_str!("lua/presence_audience.lua"),
    r#"
local removed = 0
for i = 3, #ARGV do removed = removed + redis.call('HDEL', KEYS[1], ARGV[i]) end
if removed > 0 then redis.call('SET', KEYS[2], ARGV[1]) end
if ARGV[2] == '' then return {} end
return presence_audience(KEYS[3], KEYS[1], ARGV[2])
"#
);

/// KEYS: online, online version. ARGV: the version the caller holds ('' for
/// none), its entry count. Returns {index, version, held}, as the append
/// script does (`lua/online_index.lua`).
const ROOM_ONLINE_LUA: &str = concat!(
    include_str!("lua/online_index.lua"),
    "return {online_index(KEYS[1], KEYS[2], ARGV[1], ARGV[2])}\n"
);

/// A new version token for a presence index: random, so that a version
/// names one content of the index even across a failover that loses the
/// latest writes (a counter would count again from an older value and
/// name two contents).
fn new_online_version() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The presence index value of a session: its server and user, with the
/// server id length-prefixed so that neither id needs a reserved character.
fn online_value(server_id: &str, user: &str) -> String {
    format!("{}:{server_id}{user}", server_id.len())
}

fn decode_online(session: String, value: &str) -> StoreResult<OnlineSession> {
    let corrupt = || StoreError::Corrupt(format!("presence index entry {value:?}"));
    let (len, rest) = value.split_once(':').ok_or_else(corrupt)?;
    let len: usize = len.parse().map_err(|_| corrupt())?;
    let server_id = rest.get(..len).ok_or_else(corrupt)?;
    let user = rest.get(len..).ok_or_else(corrupt)?;
    Ok(OnlineSession {
        user: user.to_owned(),
        session,
        server_id: server_id.to_owned(),
    })
}

/// See `lua/latest_seqs.lua`.
const LATEST_SEQS_LUA: &str = include_str!("lua/latest_seqs.lua");

/// `lua/latest_seqs.lua`'s reply, if it has `count` seqs.
fn decode_seqs(reply: redis::Value, count: usize) -> Option<Vec<u64>> {
    let redis::Value::BulkString(joined) = reply else {
        return None;
    };
    let seqs: Vec<u64> = joined
        .split(|b| *b == b' ')
        .map(|seq| std::str::from_utf8(seq).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    (seqs.len() == count).then_some(seqs)
}

/// An operation over many rooms as one script per Redis master: Redis 7's
/// `allow-cross-slot-keys` lets a script touch any slot of its own node,
/// and all of a room's keys share its slot. Each master's script with the
/// positions (in the caller's list) of the rooms it covers, and the rooms
/// to run one by one: those whose slot no master is known for (the slot
/// map not read yet), and those of a master with too few of them.
struct PerMaster {
    scripts: HashMap<Node, (Vec<usize>, redis::Cmd)>,
    alone: Vec<usize>,
}

impl PerMaster {
    /// Groups `rooms` by master; a master with `min_rooms` or more gets a
    /// script (`script` starts it, `add_room` adds a room's arguments),
    /// the others' rooms go `alone` and no script is built for them.
    fn new<R: AsRef<str>>(
        owners: &SlotOwners,
        rooms: &[R],
        min_rooms: usize,
        script: impl Fn() -> redis::Cmd,
        mut add_room: impl FnMut(&mut redis::Cmd, &R),
    ) -> Self {
        let mut by_master: HashMap<Node, Vec<usize>> = HashMap::new();
        let mut alone = Vec::new();
        // One buffer for every room's key: the catch-up groups every
        // followed room every second.
        let mut seq_key = String::new();
        for (i, room) in rooms.iter().enumerate() {
            seq_key.clear();
            keys::push_room_seq(&mut seq_key, room.as_ref());
            match owners.owner(key_slot(&seq_key)) {
                Some(master) => by_master.entry(master.clone()).or_default().push(i),
                None => alone.push(i),
            }
        }
        let mut scripts = HashMap::with_capacity(by_master.len());
        for (master, at) in by_master {
            if at.len() < min_rooms {
                alone.extend(at);
                continue;
            }
            let mut cmd = script();
            for i in &at {
                add_room(&mut cmd, &rooms[*i]);
            }
            scripts.insert(master, (at, cmd));
        }
        PerMaster { scripts, alone }
    }
}

/// A script run by [`run_at_master`]: sent by its hash, as `Script` does,
/// not its whole text (which Redis would hash again) with every call.
struct MasterScript {
    code: &'static str,
    hash: OnceLock<String>,
}

impl MasterScript {
    const fn new(code: &'static str) -> Self {
        MasterScript {
            code,
            hash: OnceLock::new(),
        }
    }

    /// `EVALSHA` of this script without keys, before its arguments.
    fn call(&self) -> redis::Cmd {
        let hash = self
            .hash
            .get_or_init(|| Script::new(self.code).get_hash().to_owned());
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(hash).arg(0);
        cmd
    }
}

static LATEST_SEQS: MasterScript = MasterScript::new(LATEST_SEQS_LUA);
static ANNOUNCE_ROOMS: MasterScript = MasterScript::new(ANNOUNCE_ROOMS_LUA);
static FORGET_ROOMS: MasterScript = MasterScript::new(FORGET_ROOMS_LUA);
static ROOM_SERVERS: MasterScript = MasterScript::new(include_str!("lua/room_servers.lua"));

/// Runs `call` (`script`'s) at `master`, by address: no redirect is
/// followed, so a key the node does not serve fails the script there. A
/// node without the script (new, restarted, promoted) answers `NOSCRIPT`
/// without running it: the script is loaded there and the call sent once
/// more, so that a burst of calls to such a node (every close at once)
/// does not fall back room by room.
async fn run_at_master(
    master: &Node,
    script: &MasterScript,
    call: redis::Cmd,
    cluster: &ClusterConnection,
) -> redis::RedisResult<redis::Value> {
    let (host, port) = &**master;
    let at_master = || {
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        })
    };
    // A routed command answers a server's error reply as a value: made an
    // error here, so that no caller takes a failed script for a reply.
    let send = |call: redis::Cmd| async {
        (cluster.clone().route_command(call, at_master()).await)
            .and_then(redis::Value::extract_error)
    };
    // Kept for the resend: the client takes the command (a copy of its
    // packed arguments per call, against a fall back room by room).
    let again = call.clone();
    match send(call).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script.code);
            send(load).await?;
            send(again).await
        }
        ran => ran,
    }
}

/// `lua/latest_seqs.lua` at `master`, its arguments `count` seq keys:
/// their seqs; `None` for any other reply, such as the error reply when a
/// key is not served there or the node cannot run it (Redis before 7).
async fn seqs_at_master(
    master: &Node,
    script: redis::Cmd,
    count: usize,
    cluster: &ClusterConnection,
) -> redis::RedisResult<Option<Vec<u64>>> {
    let reply = run_at_master(master, &LATEST_SEQS, script, cluster).await?;
    Ok(decode_seqs(reply, count))
}

/// The latest seqs of `rooms`, one `GET` each through the cluster client.
async fn seqs_one_by_one(rooms: &[&str], cluster: &ClusterConnection) -> StoreResult<Vec<u64>> {
    let seqs = in_steps(rooms, |room| {
        let mut conn = cluster.clone();
        async move { conn.get::<_, Option<u64>>(keys::room_seq(room)).await }
    })
    .await
    .map_err(unavailable)?;
    Ok(seqs.into_iter().map(|s| s.unwrap_or(0)).collect())
}

/// Most per-key commands a bulk operation keeps in flight (`in_steps`).
const KEY_STEP: usize = 100;

/// Runs `command` for each of `items` (a user, room or key), [`KEY_STEP`]
/// at a time, answers in order. Each command in flight costs about 4 KB in the
/// cluster client, and the allocator keeps a burst's peak for good: the
/// presence refresh of 2,500 users at once left ~3.3 KB per idle session
/// resident, 500 at a time ~850 B (docs/benchmarks.md, "Idle memory after
/// the first presence refresh"). Still one round trip per step, pipelined.
async fn in_steps<'a, I, T, E, F>(items: &'a [I], command: impl Fn(&'a I) -> F) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut done = Vec::with_capacity(items.len());
    for step in items.chunks(KEY_STEP) {
        done.extend(try_join_all(step.iter().map(&command)).await?);
    }
    Ok(done)
}

/// `lua/announce_rooms.lua` for `sessions` of `user`, before its rooms
/// are added ([`add_announced_room`]).
fn announce_rooms_script(
    user: &str,
    version: &str,
    audience_max: &str,
    sessions: &[(String, String)],
) -> redis::Cmd {
    let mut script = ANNOUNCE_ROOMS.call();
    script
        .arg(user)
        .arg(version)
        .arg(audience_max)
        .arg(sessions.len());
    for (session, server_id) in sessions {
        script.arg(session).arg(online_value(server_id, user));
    }
    script
}

fn add_announced_room(script: &mut redis::Cmd, room: &str) {
    script
        .arg(keys::room_members(room))
        .arg(keys::room_online(room))
        .arg(keys::room_seq(room))
        .arg(keys::room_online_version(room));
}

/// `lua/announce_rooms.lua`'s reply for `count` rooms.
fn decode_announced(reply: Vec<String>, count: usize) -> StoreResult<Vec<Announced>> {
    let corrupt = || StoreError::Corrupt(format!("announce reply for {count} rooms"));
    let mut fields = reply.into_iter();
    let mut announced = Vec::with_capacity(count);
    for _ in 0..count {
        let seq = fields.next().ok_or_else(corrupt)?;
        let audience_len: usize = fields
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        let audience: Vec<String> = fields.by_ref().take(audience_len).collect();
        if audience.len() != audience_len {
            return Err(corrupt());
        }
        if seq == "-1" {
            announced.push(None);
            continue;
        }
        let seq: u64 = seq.parse().map_err(|_| corrupt())?;
        let audience = match audience_len {
            0 => None,
            _ => Some(decode_audience(audience)?),
        };
        announced.push(Some((seq, audience)));
    }
    match fields.next() {
        Some(_) => Err(corrupt()),
        None => Ok(announced),
    }
}

/// Decodes `lua/presence_audience.lua`'s reply part.
fn decode_audience(mut part: Vec<String>) -> StoreResult<Audience> {
    match part.first().map(String::as_str) {
        Some("0") => Ok(None),
        Some("1") => Ok(Some(decode_online_pairs(part.split_off(1))?)),
        _ => Err(StoreError::Corrupt(format!("presence audience {part:?}"))),
    }
}

fn decode_online_pairs(flat: Vec<String>) -> StoreResult<Vec<OnlineSession>> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(session), Some(value)) = (it.next(), it.next()) {
        out.push(decode_online(session, &value)?);
    }
    Ok(out)
}

/// How to reach a Redis Cluster besides its node URLs: AUTH (a password,
/// or an ACL user and its password) and TLS (`rediss://` URLs, verified
/// against `ca_pem` or else the system's roots; a client certificate for
/// mutual TLS).
#[derive(Clone, Default)]
pub struct RedisAccess {
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM bundle of the CAs that sign the nodes' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key presented to the nodes.
    pub client_cert: Option<redis::ClientTlsConfig>,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisAccess")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

/// The connections of a [`RedisStore`], once made.
struct Connections {
    conn: ClusterConnection,
    /// Message appends and their `WAIT` only. `WAIT` blocks the connection
    /// it is sent on until replicas confirm, so it gets connections of its
    /// own rather than stalling every read queued behind it; and it must
    /// share them with the appends, since it covers that connection's writes.
    append_conn: ClusterConnection,
    /// A chat server's health reports only. A storm of presence work (a
    /// close or connect storm: 100,000 scripts at once) queues on `conn`
    /// for seconds; a report queued behind it timed out, the server went
    /// silent past the 3 s that count as dead, and another process reaped
    /// it while it was serving (its users reported offline, then online
    /// again). On connections of their own, reports wait only for what
    /// the node itself is doing.
    health_conn: ClusterConnection,
}

impl Connections {
    async fn open(client: &ClusterClient) -> redis::RedisResult<Connections> {
        Ok(Connections {
            conn: client.get_async_connection().await?,
            append_conn: client.get_async_connection().await?,
            health_conn: client.get_async_connection().await?,
        })
    }
}

/// The connections once made, and why the last attempt failed until then
/// (what `/readyz` shows).
#[derive(Default)]
struct ConnectionSlot {
    made: OnceLock<Connections>,
    last_error: std::sync::Mutex<String>,
}

impl ConnectionSlot {
    fn failed(&self, e: &redis::RedisError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
    }
}

pub struct RedisStore {
    /// Empty until Redis first answered: a process started before Redis is
    /// reachable (every fresh `helm install`) stays up, reports not ready
    /// and keeps trying in the background instead of exiting.
    connections: Arc<ConnectionSlot>,
    config: StoreConfig,
    /// Appends batched per master (`None`: each append alone).
    group_commit: Option<Arc<GroupCommit>>,
    /// Which master serves each slot: group commit and the catch-up's
    /// reads go to masters directly.
    slots: Arc<SlotMap>,
    append: Script,
    room_view: Script,
    create_room: Script,
    membership: Script,
    joined_seq: Script,
    announce: Script,
    set_registered: Script,
    expire_registrations: Script,
    mark_read: Script,
    add_session: Script,
    remove_session: Script,
    reap_user: Script,
    unhost: Script,
    unhost_own: Script,
    presence_audience: Script,
    forget_online: Script,
    room_online: Script,
    /// The presence index of rooms this process appended to, by version.
    online_cache: OnlineCache,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects to a Redis Cluster given any of its nodes' URLs
    /// (`redis://` or, for TLS, `rediss://`; credentials may be in them).
    pub async fn connect(urls: &[String], config: StoreConfig) -> StoreResult<Self> {
        Self::connect_with(urls, config, &RedisAccess::default()).await
    }

    /// [`RedisStore::connect`] with credentials and TLS settings, as
    /// managed Redis Cluster services (ElastiCache, Memorystore, Azure
    /// Cache) require.
    pub async fn connect_with(
        urls: &[String],
        config: StoreConfig,
        access: &RedisAccess,
    ) -> StoreResult<Self> {
        let mut builder = ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2));
        if let Some(username) = &access.username {
            builder = builder.username(username);
        }
        if let Some(password) = &access.password {
            builder = builder.password(password);
        }
        // rustls needs a process-wide crypto provider; which one the build
        // enables depends on the whole dependency graph, so choose it here
        // (a no-op when one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if access.ca_pem.is_some() || access.client_cert.is_some() {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: access.client_cert.clone(),
                root_cert: access.ca_pem.clone(),
            });
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::Unavailable(format!("Redis Cluster settings: {e}")))?;
        let connections = Arc::new(ConnectionSlot::default());
        match Connections::open(&client).await {
            Ok(c) => {
                let _ = connections.made.set(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis Cluster not reachable yet; retrying in the background (not ready until then)");
                connections.failed(&e);
                tokio::spawn(connect_until_reachable(
                    client,
                    Arc::downgrade(&connections),
                ));
            }
        }
        let slots = SlotMap::new();
        let group_commit = match urls.first() {
            Some(seed) if config.group_commit => {
                let acks = ReplicaAcks {
                    wanted: config.min_replica_acks,
                    timeout_ms: config.replica_ack_timeout_ms,
                };
                Some(
                    GroupCommit::new(seed, access, acks, slots.clone()).map_err(|e| {
                        StoreError::Unavailable(format!("Redis Cluster settings: {e}"))
                    })?,
                )
            }
            _ => None,
        };
        Ok(RedisStore {
            connections,
            config,
            group_commit,
            slots,
            append: Script::new(APPEND_LUA),
            room_view: Script::new(ROOM_VIEW_LUA),
            create_room: Script::new(CREATE_ROOM_LUA),
            membership: Script::new(MEMBERSHIP_LUA),
            joined_seq: Script::new(JOINED_SEQ_LUA),
            announce: Script::new(ANNOUNCE_LUA),
            set_registered: Script::new(SET_REGISTERED_LUA),
            expire_registrations: Script::new(EXPIRE_REGISTRATIONS_LUA),
            mark_read: Script::new(MARK_READ_LUA),
            add_session: Script::new(&add_session_lua()),
            remove_session: Script::new(&remove_session_lua()),
            reap_user: Script::new(&reap_user_lua()),
            unhost: Script::new(UNHOST_LUA),
            unhost_own: Script::new(UNHOST_OWN_LUA),
            presence_audience: Script::new(PRESENCE_AUDIENCE_LUA),
            forget_online: Script::new(FORGET_ONLINE_LUA),
            room_online: Script::new(ROOM_ONLINE_LUA),
            online_cache: OnlineCache::default(),
        })
    }

    fn connections(&self) -> StoreResult<&Connections> {
        self.connections.made.get().ok_or_else(|| {
            let why = self
                .connections
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            StoreError::Unavailable(format!("not connected to the Redis Cluster yet: {why}"))
        })
    }

    fn conn(&self) -> StoreResult<ClusterConnection> {
        Ok(self.connections()?.conn.clone())
    }

    fn append_conn(&self) -> StoreResult<ClusterConnection> {
        Ok(self.connections()?.append_conn.clone())
    }

    fn health_conn(&self) -> StoreResult<ClusterConnection> {
        Ok(self.connections()?.health_conn.clone())
    }

    async fn room_view_for(&self, room: &str, user: &str) -> StoreResult<Option<RoomView>> {
        let fields: Vec<String> = self
            .room_view
            .key(keys::room_meta(room))
            .key(keys::room_members(room))
            .key(keys::room_seq(room))
            .key(keys::room_reads(room))
            .arg(user)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if fields.len() != 7 {
            return Ok(None);
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("room {room}: bad number {s:?}")))
        };
        Ok(Some(RoomView {
            room: Room {
                id: room.to_owned(),
                name: fields[0].clone(),
                created_by: fields[1].clone(),
                created_at: num(&fields[2])?,
                member_count: num(&fields[3])?,
                last_seq: 0,
                read_seq: 0,
                unread: 0,
            }
            .with_read_state(num(&fields[5])?, num(&fields[6])?),
            is_member: fields[4] == "1",
        }))
    }

    /// Runs an append script (an `EVALSHA` on `room`'s keys) and waits for
    /// the replicas: in the next batch for the room's master, or alone.
    /// Returns the script's reply and how many replicas confirmed.
    async fn run_append_script(
        &self,
        script: impl Fn() -> redis::Cmd,
        room: &str,
    ) -> StoreResult<(AppendReply, u32)> {
        if let Some(group) = &self.group_commit {
            let cluster = &self.connections()?.conn;
            match group.run(script(), &keys::room_seq(room), cluster).await {
                Outcome::Ran { script, replicas } => {
                    let reply = redis::from_redis_value(script)
                        .map_err(|e| StoreError::Corrupt(format!("append reply: {e}")))?;
                    return Ok((reply, replicas));
                }
                Outcome::Failed(e) => return Err(unavailable(e)),
                Outcome::RunAlone => {}
            }
        }
        let mut pipe = redis::pipe();
        pipe.add_command(script());
        let wanted = self.config.min_replica_acks;
        if wanted > 0 {
            pipe.cmd("WAIT")
                .arg(wanted)
                .arg(self.config.replica_ack_timeout_ms);
        }
        let append_conn = self.append_conn()?;
        match Self::run_append(append_conn.clone(), &pipe).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.append
                    .prepare_invoke()
                    .load_async(&mut append_conn.clone())
                    .await
                    .map_err(unavailable)?;
                Self::run_append(append_conn, &pipe).await
            }
            other => other,
        }
        .map_err(unavailable)
    }

    /// Runs the append pipeline built by `append`: the script and, when
    /// replicas must confirm, `WAIT`. Both reach the room's master in one
    /// write on the append connection, so the `WAIT` is certain to cover
    /// the append (same connection, nothing in between) and the ack costs
    /// one round trip to Redis plus the replicas' confirmation. Returns the
    /// script's reply and the replicas that confirmed (`u32::MAX` when none
    /// were asked for).
    async fn run_append(
        mut conn: ClusterConnection,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<(AppendReply, u32)> {
        // Routed by the script's keys (WAIT has none).
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        let script: AppendReply = match replies.next() {
            Some(value) => redis::from_redis_value(value)?,
            None => (String::new(), Vec::new(), String::new(), String::new()),
        };
        let replicas = match replies.next() {
            Some(value) => redis::from_redis_value(value)?,
            None => u32::MAX,
        };
        Ok((script, replicas))
    }

    async fn change_membership(&self, room: &str, user: &str, op: &str) -> StoreResult<bool> {
        let changed: i64 = self
            .membership
            .key(keys::room_meta(room))
            .key(keys::room_members(room))
            .key(keys::room_online(room))
            .key(keys::room_reads(room))
            .key(keys::room_joined(room))
            .key(keys::room_seq(room))
            .key(keys::room_online_version(room))
            .arg(op)
            .arg(user)
            .arg(new_online_version())
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if changed < 0 {
            return Err(StoreError::NoRoom(room.to_owned()));
        }
        // The per-user index lives in another slot: it follows the member
        // set (the source of truth) and is repaired on read if this step is
        // lost to a crash.
        let mut conn = self.conn()?;
        let index = keys::user_rooms(user);
        let _: i64 = if op == "add" {
            conn.sadd(index, room).await
        } else {
            conn.srem(index, room).await
        }
        .map_err(unavailable)?;
        if op == "add" {
            // After the member and index writes: see `Store::add_session`.
            self.announce_existing_sessions(room, user).await?;
        }
        Ok(changed == 1)
    }

    /// Indexes `user`'s current sessions in `room`. Returns the room's
    /// latest seq, or `None` if `user` is not a member; with
    /// `audience_max`, also the room's presence audience (see
    /// [`Store::presence_audience`]), read in the same step.
    async fn announce(
        &self,
        room: &str,
        user: &str,
        sessions: &[(String, String)],
        audience_max: Option<u64>,
    ) -> StoreResult<Announced> {
        let mut invocation = self.announce.prepare_invoke();
        invocation
            .key(keys::room_members(room))
            .key(keys::room_online(room))
            .key(keys::room_seq(room))
            .key(keys::room_online_version(room))
            .arg(user)
            .arg(new_online_version())
            .arg(audience_max.map(|m| m.to_string()).unwrap_or_default());
        for (session, server_id) in sessions {
            invocation.arg(session).arg(online_value(server_id, user));
        }
        let mut reply: Vec<String> = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let corrupt = |reply: &[String]| StoreError::Corrupt(format!("announce reply {reply:?}"));
        let Some(seq) = reply.first() else {
            return Err(corrupt(&reply));
        };
        if seq == "-1" {
            return Ok(None);
        }
        let seq: u64 = seq.parse().map_err(|_| corrupt(&reply))?;
        let audience = match reply.len() {
            1 => None,
            _ => Some(decode_audience(reply.split_off(1))?),
        };
        Ok(Some((seq, audience)))
    }

    /// [`Self::announce`] in each of `rooms`, answers in order: one script
    /// per Redis master for its rooms (`lua/announce_rooms.lua`), and one
    /// announce per room where that script cannot answer (a stale slot map,
    /// a failover, Redis before 7). A room's announce writes the same when
    /// run again, so a script that failed after some of its writes is safe
    /// to follow with them.
    async fn announce_rooms(
        &self,
        rooms: &[String],
        user: &str,
        sessions: &[(String, String)],
        audience_max: Option<u64>,
    ) -> StoreResult<Vec<Announced>> {
        let cluster = self.conn()?;
        let owners = self.slots.owners(&cluster);
        let version = new_online_version();
        let max = audience_max.map(|m| m.to_string()).unwrap_or_default();
        let per_master = PerMaster::new(
            &owners,
            rooms,
            ANNOUNCE_SCRIPT_MIN_ROOMS,
            || announce_rooms_script(user, &version, &max, sessions),
            |script, room| add_announced_room(script, room),
        );
        self.run_per_master(
            &cluster,
            per_master,
            rooms.len(),
            &ANNOUNCE_ROOMS,
            |fields, at| decode_announced(fields, at.len()),
            |i| self.announce(&rooms[i], user, sessions, audience_max),
        )
        .await
    }

    /// Runs `per_master`'s scripts (`script`, each reply decoded for the
    /// positions it covers), and `one(i)` for the rooms left alone and for
    /// those of a master whose script failed (the per-master scripts write
    /// only what running them again, or their per-room version, writes
    /// the same): the answers of `count` rooms in their order.
    async fn run_per_master<T, One, Fut>(
        &self,
        cluster: &ClusterConnection,
        per_master: PerMaster,
        count: usize,
        script: &MasterScript,
        decode: impl Fn(Vec<String>, &[usize]) -> StoreResult<Vec<T>>,
        one: One,
    ) -> StoreResult<Vec<T>>
    where
        T: Default,
        One: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let PerMaster {
            scripts,
            alone: mut one_by_one,
        } = per_master;
        let mut answers: Vec<T> = std::iter::repeat_with(T::default).take(count).collect();
        let scripts = scripts.into_iter().map(|(master, (at, call))| {
            let decode = &decode;
            async move {
                let reply = run_at_master(&master, script, call, cluster).await;
                let decoded = reply.map_err(unavailable).and_then(|reply| {
                    let fields = redis::from_redis_value::<Vec<String>>(reply)
                        .map_err(|e| StoreError::Corrupt(format!("per-master reply: {e}")))?;
                    decode(fields, &at)
                });
                (master, at, decoded)
            }
        });
        for (master, at, decoded) in join_all(scripts).await {
            match decoded {
                Ok(decoded) => {
                    for (i, answer) in at.into_iter().zip(decoded) {
                        answers[i] = answer;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?master, "per-master script failed: one room at a time");
                    self.slots.refresh(cluster);
                    one_by_one.extend(at);
                }
            }
        }
        let alone = in_steps(&one_by_one, |i| one(*i)).await?;
        for (i, answer) in one_by_one.into_iter().zip(alone) {
            answers[i] = answer;
        }
        Ok(answers)
    }

    /// Reaps one chat server's sessions: each user's step is atomic on the
    /// user's slot, so concurrent reapers report each transition once.
    /// Each user that went offline comes with the rooms' presence
    /// audiences (rooms of at most `audience_max` members), read as the
    /// sessions leave each room's index, without the reaped server's
    /// sessions (those of its other users may not have left yet).
    async fn reap(
        &self,
        server_id: &str,
        force: bool,
        audience_max: u64,
    ) -> StoreResult<Vec<WentOffline>> {
        let started = std::time::Instant::now();
        // The server's own set, and the registry's from before it moved
        // (a server of the previous release, or this one's previous run).
        let (mut conn_own, mut conn_legacy) = (self.conn()?, self.conn()?);
        let (own, legacy): (Vec<String>, Vec<String>) = tokio::try_join!(
            conn_own.smembers(keys::server_hosted(server_id)),
            conn_legacy.smembers(keys::registry_hosted(server_id)),
        )
        .map_err(unavailable)?;
        let mut users = own;
        users.extend(legacy);
        users.sort();
        users.dedup();
        // Marked before any session is taken and again after the last
        // write to the rooms' indexes, so that a server alive after all
        // announces its sessions again whenever this lands, and after
        // every forget (`Store::take_reaped_mark`).
        let mark = !force && !users.is_empty();
        if mark {
            self.mark_reaped(server_id).await?;
        }
        // A forced reap is a restarted server's, of its previous run: it
        // tries every user, claimed or not, since it must not take sessions
        // while another reaper may still drop its users' sessions there.
        let (done, dropped) = self.reap_users(server_id, &users, !force).await?;
        let users_took = started.elapsed();
        // The dead server's sessions leave the rooms' indexes too, so
        // routing stops sending there (it comes back by re-announcing):
        // one forget per room for all its reaped users (a server's users
        // share rooms), which reads the audience once for all of their
        // offline events.
        let mut by_room: BTreeMap<&str, RoomForget> = BTreeMap::new();
        for reaped in &dropped {
            for room in &reaped.rooms {
                let forget = by_room.entry(room).or_default();
                forget.room = room;
                forget.sessions.extend(reaped.sessions.iter().cloned());
                forget.audience |= reaped.offline;
            }
        }
        let by_room: Vec<RoomForget> = by_room.into_values().collect();
        let mut audiences: HashMap<&str, Audience> = HashMap::new();
        for step in by_room.chunks(FORGET_ROOMS_STEP) {
            // The users' records are dropped already: failing the reap now
            // would lose their offline transitions for good (no reaper
            // finds those users again). A step that fails leaves its rooms'
            // entries (as a failed reap always did) and its audiences to
            // the announcer's reads.
            let forgotten = match self.forget_in_rooms(step, audience_max).await {
                Ok(forgotten) => forgotten,
                Err(e) => {
                    tracing::warn!(error = %e, server_id, rooms = step.len(), "reap: rooms' presence indexes not cleaned");
                    continue;
                }
            };
            for (forget, audience) in step.iter().zip(forgotten) {
                let Some(mut audience) = audience else {
                    continue;
                };
                // Only its other users' sessions may still be there
                // (taken by another reaper), and they are gone: no event
                // for them.
                if let Some(online) = &mut audience {
                    online.retain(|s| s.server_id != server_id);
                }
                audiences.insert(forget.room, audience);
            }
        }
        let rooms_took = started.elapsed() - users_took;
        if mark && !dropped.is_empty() {
            if let Err(e) = self.mark_reaped(server_id).await {
                tracing::warn!(error = %e, server_id, "reap: the server not marked after its forgets");
            }
        }
        let reaped: Vec<WentOffline> = dropped
            .iter()
            .filter(|reaped| reaped.offline)
            .map(|reaped| {
                let presence_audiences = reaped
                    .rooms
                    .iter()
                    .filter_map(|room| Some((room.clone(), audiences.get(room.as_str())?.clone())))
                    .collect();
                WentOffline {
                    change: PresenceChange {
                        user: reaped.user.clone(),
                        online: false,
                        ts: reaped.ts,
                        rooms: reaped.rooms.clone(),
                    },
                    presence_audiences,
                }
            })
            .collect();
        if !users.is_empty() {
            // The parts, for the 5 s the contract gives to report a dead
            // server's users offline: the users' records (this process
            // took `taken` of them, in chunks claimed from `users`:
            // concurrent reapers share the work), then the rooms' indexes.
            // `done`: the users that may leave the server's sets.
            tracing::info!(
                server_id,
                users = users.len(),
                done = done.len(),
                taken = dropped.len(),
                rooms = by_room.len(),
                users_ms = users_took.as_millis() as u64,
                rooms_ms = rooms_took.as_millis() as u64,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reaped the sessions of a dead chat server"
            );
        }
        // The users' records are dropped already: a failure from here on
        // must not lose their offline transitions (no reaper finds those
        // users again). The users stay listed; the next reap unhosts them.
        if let Err(e) = self.unhost(server_id, force, &users, &done).await {
            tracing::warn!(error = %e, server_id, "reap: the server's users not unhosted");
        }
        Ok(reaped)
    }

    /// The last step of [`Self::reap`]: the users tried (`done`) leave
    /// the server's sets, and the server leaves `hosts` once it hosts
    /// nobody.
    async fn unhost(
        &self,
        server_id: &str,
        force: bool,
        users: &[String],
        done: &[&String],
    ) -> StoreResult<()> {
        // A server that reported health again meanwhile was only cut off:
        // its sets stay (the registry's script checks again, atomically
        // with `hosts`; the server rejoins `hosts` with its next health).
        if !force && have_health_records(&mut self.conn()?, &[server_id.to_owned()]).await?[0] {
            return Ok(());
        }
        // Only users tried already leave the server's sets: those of
        // chunks another reaper is trying stay until it is done, so a
        // reaper that dies before it tries them leaves them to the next.
        if done.is_empty() && !users.is_empty() {
            return Ok(());
        }
        let mut own = self.unhost_own.prepare_invoke();
        own.key(keys::server_hosted(server_id));
        for user in done {
            own.arg(user);
        }
        let still_hosted: i64 = own
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let mut invocation = self.unhost.prepare_invoke();
        invocation
            .key(keys::REGISTRY_HOSTS)
            .key(keys::registry_hosted(server_id))
            .key(keys::registry_server(server_id))
            .arg(server_id)
            .arg(if force { "1" } else { "0" })
            .arg(still_hosted);
        for user in done {
            invocation.arg(user);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The users part of [`Self::reap`]: drops `users`' sessions on the
    /// dead server, chunk by chunk, only those of chunks it could claim
    /// if `claim_chunks` (else every chunk). Every process reaps and each user's
    /// step is atomic, so any number of reapers is correct; but when each
    /// tried every user, a dead server cost Redis one script per user per
    /// process, and the first reaper took every user and then did all the
    /// rooms and announcing alone. So a reaper claims a chunk before it
    /// tries its users (a key in the server's slot that expires), going
    /// round from a random chunk: concurrent reapers share the users and
    /// the work after. Returns the users that may leave the server's sets
    /// (those of the chunks this reaper tried, and of chunks another
    /// reaper is done with) and those whose sessions this reaper dropped.
    async fn reap_users<'u>(
        &self,
        server_id: &str,
        users: &'u [String],
        claim_chunks: bool,
    ) -> StoreResult<(Vec<&'u String>, Vec<ReapedUser>)> {
        let chunks: Vec<&[String]> = users.chunks(REAP_CHUNK_USERS).collect();
        if chunks.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // Chunks are cut from the list as this reaper read it: another
        // list (after a reaper unhosted some users) has its own claims.
        let list = keys::user_list_digest(users);
        let first = rand::random_range(0..chunks.len());
        let (mut done, mut dropped) = (Vec::new(), Vec::new());
        for i in (0..chunks.len()).map(|k| (first + k) % chunks.len()) {
            let claim = claim_chunks.then(|| keys::server_reap_claim(server_id, list, i));
            let step = match &claim {
                Some(claim) => self.reap_claimed_chunk(server_id, claim, chunks[i]).await,
                None => in_steps(chunks[i], |user| self.reap_one_user(server_id, user))
                    .await
                    .map(Some),
            };
            match step {
                Ok(Some(reaped)) => {
                    done.extend(chunks[i]);
                    dropped.extend(reaped.into_iter().flatten());
                }
                Ok(None) => {}
                // What this reaper has so far (the transitions it took,
                // the users it may unhost) is kept: it stops here and
                // leaves the rest to the next reaper.
                Err(e) if !done.is_empty() => {
                    tracing::warn!(error = %e, server_id, "reap: stopped after a failed chunk");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((done, dropped))
    }

    /// One chunk of [`Self::reap_users`] under its claim: `None` when
    /// another reaper is trying it, `Some(vec![])` when another is done
    /// with it (its users may leave the server's sets all the same), else
    /// what this reaper dropped.
    async fn reap_claimed_chunk(
        &self,
        server_id: &str,
        claim: &str,
        chunk: &[String],
    ) -> StoreResult<Option<Vec<Option<ReapedUser>>>> {
        // Nothing before: ours. `done`: another reaper tried these users
        // (it could not unhost them if the server's health record still
        // lived, so this reaper may). `taken`: another reaper is trying
        // them.
        let before: Option<String> = redis::cmd("SET")
            .arg(claim)
            .arg(CLAIM_TAKEN)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(REAP_CLAIM_TTL.as_millis() as u64)
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        match before.as_deref() {
            None => {}
            Some(CLAIM_DONE) => return Ok(Some(Vec::new())),
            Some(_) => return Ok(None),
        }
        // A server's users can be tens of thousands: `in_steps`.
        let reaped = match in_steps(chunk, |user| self.reap_one_user(server_id, user)).await {
            Ok(reaped) => reaped,
            Err(e) => {
                // Let the next reaper try them now, not once the claim
                // expires (best effort: it expires anyway).
                let _: Result<i64, _> = self.conn()?.del(claim).await;
                return Err(e);
            }
        };
        // Best effort too: without it the claim expires as `taken`, and
        // the next reaper tries these users again (nothing left to drop).
        let marked: Result<Option<String>, _> = redis::cmd("SET")
            .arg(claim)
            .arg(CLAIM_DONE)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut self.conn()?)
            .await;
        if let Err(e) = marked {
            tracing::debug!(error = %e, claim, "reap: a claim not marked done");
        }
        Ok(Some(reaped))
    }

    /// Leaves `Store::take_reaped_mark`'s mark on `server_id` (for longer
    /// than any silence a live server reports after).
    async fn mark_reaped(&self, server_id: &str) -> StoreResult<()> {
        self.conn()?
            .pset_ex::<_, _, ()>(keys::server_reaped(server_id), 1, REAPED_MARK_TTL_MS)
            .await
            .map_err(unavailable)
    }

    /// One user's step of a reap: drops the user's sessions on the dead
    /// server; `None` if there were none (another reaper took them).
    async fn reap_one_user(
        &self,
        server_id: &str,
        user: &String,
    ) -> StoreResult<Option<ReapedUser>> {
        let reply: Vec<String> = self
            .reap_user
            .key(keys::user_sessions(user))
            .key(keys::user_rooms(user))
            .arg(server_id)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if reply.is_empty() {
            return Ok(None);
        }
        let (head, ts, mut rest) = split_presence_reply(reply, 1)?;
        let count: usize = rest
            .first()
            .and_then(|n| n.parse().ok())
            .filter(|n| rest.len() > *n)
            .ok_or_else(|| StoreError::Corrupt("reap reply without sessions".into()))?;
        let rooms = rest.split_off(count + 1);
        rest.remove(0);
        Ok::<_, StoreError>(Some(ReapedUser {
            user: user.clone(),
            offline: head[0] == "1",
            ts,
            sessions: rest,
            rooms: sorted(rooms),
        }))
    }

    /// Takes each room's `sessions` out of its presence index and reads
    /// the audience left where wanted (rooms of at most `audience_max`
    /// members): one `lua/forget_rooms.lua` per master holding several of
    /// the rooms, one forget for each other room (and for a master's rooms
    /// when its script failed: a forget is the same when run again).
    async fn forget_in_rooms(
        &self,
        rooms: &[RoomForget<'_>],
        audience_max: u64,
    ) -> StoreResult<Vec<Option<Audience>>> {
        let cluster = self.conn()?;
        let owners = self.slots.owners(&cluster);
        let per_master = PerMaster::new(
            &owners,
            rooms,
            // The announces' threshold (not measured for forgets: a reap
            // has hundreds of rooms per master, so it rarely matters).
            ANNOUNCE_SCRIPT_MIN_ROOMS,
            || {
                let mut script = FORGET_ROOMS.call();
                script.arg(new_online_version()).arg(audience_max);
                script
            },
            add_forgotten_room,
        );
        self.run_per_master(
            &cluster,
            per_master,
            rooms.len(),
            &FORGET_ROOMS,
            |fields, at| decode_forgotten(fields, at.iter().map(|i| rooms[*i].audience)),
            |i| {
                let forget = &rooms[i];
                let audience_max = Some(audience_max).filter(|_| forget.audience);
                self.forget_online_with(forget.room, &forget.sessions, audience_max)
            },
        )
        .await
    }

    /// `remove_session`; with `audience_max`, the rooms' presence
    /// audiences too when the user went offline (see
    /// `Store::remove_session_announced`).
    async fn remove_session_with(
        &self,
        user: &str,
        session: &str,
        audience_max: Option<u64>,
    ) -> StoreResult<Option<WentOffline>> {
        let reply: Vec<String> = self
            .remove_session
            .key(keys::user_sessions(user))
            .key(keys::user_rooms(user))
            .arg(session)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let (head, ts, rooms) = split_presence_reply(reply, 3)?;
        let (offline, still_hosted, server_id) = (&head[0], &head[1], &head[2]);
        let offline = offline == "1";
        // Audiences only for a presence event: when the user went offline.
        // The session leaves its rooms' indexes with one script per master
        // holding several of them (a user in 20 rooms: one script per
        // master instead of 20). Tried before the audiences came with the
        // forget and reverted then: the reads that followed queued behind
        // a close storm's scripts.
        let wanted = audience_max.filter(|_| offline);
        let forgets: Vec<RoomForget> = rooms
            .iter()
            .map(|room| RoomForget {
                room,
                sessions: vec![session.to_owned()],
                audience: wanted.is_some(),
            })
            .collect();
        let audiences = self
            .forget_in_rooms(&forgets, wanted.unwrap_or_default())
            .await?;
        if still_hosted == "0" && !server_id.is_empty() {
            let _: i64 = self
                .conn()?
                .srem(keys::server_hosted(server_id), user)
                .await
                .map_err(unavailable)?;
        }
        if !offline {
            return Ok(None);
        }
        let presence_audiences = sorted_audiences(&rooms, audiences);
        Ok(Some(WentOffline {
            change: PresenceChange {
                user: user.to_owned(),
                online: false,
                ts,
                rooms: sorted(rooms),
            },
            presence_audiences,
        }))
    }

    /// `forget_online`; with `audience_max`, the room's presence audience
    /// left, read in the same step (`Some`), else `None`.
    async fn forget_online_with(
        &self,
        room: &str,
        sessions: &[String],
        audience_max: Option<u64>,
    ) -> StoreResult<Option<Audience>> {
        if sessions.is_empty() {
            return Ok(None);
        }
        let mut invocation = self.forget_online.prepare_invoke();
        invocation
            .key(keys::room_online(room))
            .key(keys::room_online_version(room))
            .key(keys::room_members(room))
            .arg(new_online_version())
            .arg(audience_max.map(|max| max.to_string()).unwrap_or_default());
        for session in sessions {
            invocation.arg(session);
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        match audience_max {
            Some(_) => decode_audience(reply).map(Some),
            None => Ok(None),
        }
    }

    /// `add_session`; with `audience_max`, the rooms' presence audiences
    /// too when the user came online (see `Store::add_session_announced`).
    async fn add_session_with(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
        audience_max: Option<u64>,
    ) -> StoreResult<SessionAdded> {
        // The server's list of hosted users (the server's slot) and the
        // user's record (user slot) are written concurrently: a connect
        // costs one round trip here, not two. The order would matter only
        // to a reaper reaping this very server while it adds a session,
        // that is, never for a live server. The server is in `hosts`
        // already: it joined with its health, before taking sessions.
        let mut hosted_conn = self.conn()?;
        let mut user_conn = self.conn()?;
        let mut record = self.add_session.prepare_invoke();
        record
            .key(keys::user_sessions(user))
            .key(keys::user_rooms(user))
            .arg(&location.session)
            .arg(&location.server_id)
            .arg(ttl_ms);
        let ((), reply): ((), Vec<String>) = tokio::try_join!(
            hosted_conn.sadd::<_, _, ()>(keys::server_hosted(&location.server_id), user),
            record.invoke_async(&mut user_conn),
        )
        .map_err(unavailable)?;
        let (first, ts, sessions, rooms) = split_add_session_reply(reply)?;
        let session = [(location.session.clone(), location.server_id.clone())];
        // Audiences only for a presence event: when the user came online.
        let audience_max = audience_max.filter(|_| first);
        let announced = self
            .announce_rooms(&rooms, user, &session, audience_max)
            .await?;
        let mut seqs = Vec::with_capacity(rooms.len());
        let mut presence_audiences = Vec::new();
        for (room, announced) in rooms.into_iter().zip(announced) {
            let Some((seq, audience)) = announced else {
                continue;
            };
            if let Some(audience) = audience {
                presence_audiences.push((room.clone(), audience));
            }
            seqs.push((room, seq));
        }
        seqs.sort();
        presence_audiences.sort_by(|a, b| a.0.cmp(&b.0));
        let came_online = first.then(|| PresenceChange {
            user: user.to_owned(),
            online: true,
            ts,
            rooms: seqs.iter().map(|(room, _)| room.clone()).collect(),
        });
        Ok(SessionAdded {
            rooms: seqs,
            came_online,
            sessions,
            presence_audiences,
        })
    }

    /// The latest seqs of the rooms at positions `at` of `rooms`, all served
    /// by `master` as this process last read the slot owners: `script`
    /// there, or one read per room through the cluster client if the map
    /// was stale or the script failed (the map is read again then).
    async fn seqs_on(
        &self,
        master: &Node,
        script: redis::Cmd,
        at: &[usize],
        rooms: &[&str],
        cluster: &ClusterConnection,
    ) -> StoreResult<Vec<u64>> {
        match seqs_at_master(master, script, at.len(), cluster).await {
            Ok(Some(seqs)) => Ok(seqs),
            failed => {
                if let Err(e) = failed {
                    tracing::debug!(error = %e, ?master, "latest seqs: reading one by one");
                }
                self.slots.refresh(cluster);
                let here: Vec<&str> = at.iter().map(|i| rooms[*i]).collect();
                seqs_one_by_one(&here, cluster).await
            }
        }
    }

    async fn announce_existing_sessions(&self, room: &str, user: &str) -> StoreResult<()> {
        let sessions: Vec<(String, String)> = self
            .conn()?
            .hgetall(keys::user_sessions(user))
            .await
            .map_err(unavailable)?;
        if !sessions.is_empty() {
            self.announce(room, user, &sessions, None).await?;
        }
        Ok(())
    }
}

/// Splits a presence script's reply: `head` fixed fields, then the store's
/// clock (ms), then room ids.
fn split_presence_reply(
    mut reply: Vec<String>,
    head: usize,
) -> StoreResult<(Vec<String>, u64, Vec<String>)> {
    if reply.len() < head + 1 {
        return Err(StoreError::Corrupt(format!("presence reply {reply:?}")));
    }
    let rooms = reply.split_off(head + 1);
    let ts = reply
        .pop()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("presence reply without a time".into()))?;
    Ok((reply, ts, rooms))
}

/// The audiences read with a session's forgets (`forget_online_with`),
/// paired with their rooms and sorted by room, as `WentOffline` holds
/// them.
fn sorted_audiences(rooms: &[String], audiences: Vec<Option<Audience>>) -> Vec<(String, Audience)> {
    let mut paired: Vec<(String, Audience)> = rooms
        .iter()
        .zip(audiences)
        .filter_map(|(room, audience)| Some((room.clone(), audience?)))
        .collect();
    paired.sort_by(|a, b| a.0.cmp(&b.0));
    paired
}

/// A room's part in a reap: the reaped sessions that leave its presence
/// index, and whether its audience is wanted (a user went offline).
#[derive(Default)]
struct RoomForget<'a> {
    room: &'a str,
    sessions: Vec<String>,
    audience: bool,
}

impl AsRef<str> for RoomForget<'_> {
    fn as_ref(&self) -> &str {
        self.room
    }
}

/// Adds a room to a `lua/forget_rooms.lua` call.
fn add_forgotten_room(script: &mut redis::Cmd, forget: &RoomForget) {
    script
        .arg(keys::room_online(forget.room))
        .arg(keys::room_online_version(forget.room))
        .arg(keys::room_members(forget.room))
        .arg(if forget.audience { "1" } else { "0" })
        .arg(forget.sessions.len());
    for session in &forget.sessions {
        script.arg(session);
    }
}

/// `lua/forget_rooms.lua`'s reply for rooms wanting audiences as in
/// `wants`: each room's audience, `None` where none was wanted.
fn decode_forgotten(
    reply: Vec<String>,
    wants: impl ExactSizeIterator<Item = bool>,
) -> StoreResult<Vec<Option<Audience>>> {
    let count = wants.len();
    let corrupt = || StoreError::Corrupt(format!("forget reply for {count} rooms"));
    let mut fields = reply.into_iter();
    let mut forgotten = Vec::with_capacity(count);
    for want in wants {
        let len: usize = fields
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        let audience: Vec<String> = fields.by_ref().take(len).collect();
        if audience.len() != len || want != (len > 0) {
            return Err(corrupt());
        }
        forgotten.push(if want {
            Some(decode_audience(audience)?)
        } else {
            None
        });
    }
    match fields.next() {
        Some(_) => Err(corrupt()),
        None => Ok(forgotten),
    }
}

/// One user's sessions on a reaped server, dropped from the user's record
/// (`reap_user_lua`), before they leave the rooms' indexes.
struct ReapedUser {
    user: String,
    /// That left the user without a session.
    offline: bool,
    ts: u64,
    sessions: Vec<String>,
    /// Sorted.
    rooms: Vec<String>,
}

fn sorted(mut rooms: Vec<String>) -> Vec<String> {
    rooms.sort();
    rooms
}

/// Whether each of `server_ids` has a health record (is not silent for
/// longer than the dead-after interval), in one `MGET`.
async fn have_health_records(
    conn: &mut ClusterConnection,
    server_ids: &[String],
) -> StoreResult<Vec<bool>> {
    let health_keys: Vec<String> = server_ids
        .iter()
        .map(|id| keys::registry_server(id))
        .collect();
    let records: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&health_keys)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(records.iter().map(Option::is_some).collect())
}

/// The append script's reply: status, presence index (empty when the
/// caller holds it), the index's version, '1' if the caller holds it.
type AppendReply = (String, Vec<String>, String, String);

/// A history entry as `XRANGE` lists it: `<seq>-0` and the fields the
/// append script wrote (`i`, `f`, `t`, `b`, `c`, in that order).
type LogEntry = (String, Vec<String>);

fn decode_log_entry(room: &str, (entry_id, fields): LogEntry) -> StoreResult<Message> {
    let corrupt = || StoreError::Corrupt(format!("room {room}: history entry {entry_id}"));
    let seq = entry_id
        .split_once('-')
        .and_then(|(seq, _)| seq.parse().ok())
        .ok_or_else(corrupt)?;
    let [_, id, _, from, _, ts, _, body, _, client_msg_id]: [String; 10] =
        fields.try_into().map_err(|_| corrupt())?;
    Ok(Message {
        room: room.to_owned(),
        seq,
        id,
        from,
        body,
        ts: ts.parse().map_err(|_| corrupt())?,
        client_msg_id: Some(client_msg_id).filter(|c| !c.is_empty()),
    })
}

/// Joins a history read of the Stream with the same read of the legacy
/// sorted set (rooms from before the Stream): ascending by seq, each seq
/// once, at most `limit`: the lowest when reading forwards, the highest
/// when reading backwards.
fn merge_history(
    mut messages: Vec<Message>,
    legacy: Vec<Message>,
    limit: u32,
    backwards: bool,
) -> Vec<Message> {
    if !legacy.is_empty() {
        messages.extend(legacy);
        messages.sort_by_key(|m| m.seq);
        messages.dedup_by_key(|m| m.seq);
    }
    let limit = limit as usize;
    if messages.len() > limit {
        if backwards {
            messages.drain(..messages.len() - limit);
        } else {
            messages.truncate(limit);
        }
    }
    messages
}

#[async_trait]
impl Store for RedisStore {
    fn presence_index_stats(&self) -> Option<crate::PresenceIndexStats> {
        Some(self.online_cache.stats())
    }

    fn group_commit_stats(&self) -> Option<crate::GroupCommitStats> {
        self.group_commit.as_ref().map(|g| g.stats())
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn create_room(&self, room: NewRoom) -> StoreResult<Room> {
        let mut invocation = self.create_room.prepare_invoke();
        invocation
            .key(keys::room_meta(&room.id))
            .key(keys::room_members(&room.id))
            .arg(&room.name)
            .arg(&room.created_by)
            .arg(room.created_at);
        for m in &room.members {
            invocation.arg(m);
        }
        let count: u64 = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let shared_conn = self.conn()?;
        try_join_all(room.members.iter().map(|m| {
            let mut conn = shared_conn.clone();
            let key = keys::user_rooms(m);
            let id = room.id.clone();
            async move { conn.sadd::<_, _, i64>(key, id).await }
        }))
        .await
        .map_err(unavailable)?;
        try_join_all(
            room.members
                .iter()
                .map(|m| self.announce_existing_sessions(&room.id, m)),
        )
        .await?;
        Ok(Room {
            id: room.id,
            name: room.name,
            created_by: room.created_by,
            created_at: room.created_at,
            member_count: count,
            last_seq: 0,
            read_seq: 0,
            unread: 0,
        })
    }

    async fn room_view(&self, room: &str, viewer: &str) -> StoreResult<Option<RoomView>> {
        self.room_view_for(room, viewer).await
    }

    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        self.conn()?
            .sismember(keys::room_members(room), user)
            .await
            .map_err(unavailable)
    }

    async fn members(&self, room: &str) -> StoreResult<Vec<String>> {
        let mut members: Vec<String> = self
            .conn()?
            .smembers(keys::room_members(room))
            .await
            .map_err(unavailable)?;
        members.sort();
        Ok(members)
    }

    async fn rooms_of_user(&self, user: &str) -> StoreResult<Vec<Room>> {
        let ids: Vec<String> = self
            .conn()?
            .smembers(keys::user_rooms(user))
            .await
            .map_err(unavailable)?;
        let views = try_join_all(ids.iter().map(|id| self.room_view_for(id, user))).await?;
        let mut rooms = Vec::with_capacity(views.len());
        for (id, view) in ids.iter().zip(views) {
            match view {
                Some(RoomView {
                    room,
                    is_member: true,
                }) => rooms.push(room),
                // Stale index entry (a removal interrupted halfway): repair.
                _ => {
                    if let Ok(mut conn) = self.conn() {
                        let _: Result<i64, _> = conn.srem(keys::user_rooms(user), id).await;
                    }
                }
            }
        }
        rooms.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rooms)
    }

    async fn add_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        self.change_membership(room, user, "add").await
    }

    async fn remove_member(&self, room: &str, user: &str) -> StoreResult<bool> {
        self.change_membership(room, user, "remove").await
    }

    async fn joined_seq(&self, room: &str, user: &str) -> StoreResult<Option<u64>> {
        let joined: i64 = self
            .joined_seq
            .key(keys::room_meta(room))
            .key(keys::room_members(room))
            .key(keys::room_joined(room))
            .arg(user)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(joined).ok())
    }

    async fn append(&self, m: NewMessage) -> StoreResult<Appended> {
        let wanted = self.config.min_replica_acks;
        let client_msg_id = m.client_msg_id.as_deref().unwrap_or("");
        let dedup_field = keys::dedup_field(&m.from, client_msg_id);
        let ttl = self.config.dedup_ttl_ms.max(1);
        // The store's clock, not the message's ts (a caller may set that).
        let now = chat_protocol::now_ms();
        let window = now / ttl;
        let cached = self.online_cache.get(&m.room);
        let (held_version, held_len) = OnlineCache::script_args(&cached);
        // Built again only if group commit hands the append back.
        let script = || {
            let mut script = redis::cmd("EVALSHA");
            script
                .arg(self.append.get_hash())
                .arg(10)
                .arg(keys::room_meta(&m.room))
                .arg(keys::room_members(&m.room))
                .arg(keys::room_seq(&m.room))
                .arg(keys::room_log(&m.room))
                .arg(keys::room_dedup_window(&m.room, window))
                .arg(keys::room_dedup_window(&m.room, window.saturating_sub(1)))
                .arg(keys::room_online(&m.room))
                .arg(keys::room_reads(&m.room))
                .arg(keys::room_messages(&m.room))
                .arg(keys::room_online_version(&m.room))
                .arg(&m.from)
                .arg(client_msg_id)
                .arg(&m.id)
                .arg(m.ts)
                .arg(&m.body)
                .arg(self.config.history_retention)
                .arg(ttl)
                .arg(if m.from_member { "1" } else { "0" })
                .arg(&dedup_field[..])
                .arg(window)
                .arg(now)
                .arg(held_version)
                .arg(held_len);
            script
        };
        let ((status, online, version, held), replicas) =
            self.run_append_script(script, &m.room).await?;
        let corrupt = || StoreError::Corrupt(format!("append reply {status:?}"));
        let seq_of = |s: &str| s.parse::<u64>().map_err(|_| corrupt());
        let (message, duplicate) = match status.split_at_checked(2) {
            Some(("N:", seq)) => (
                Message {
                    seq: seq_of(seq)?,
                    room: m.room,
                    id: m.id,
                    from: m.from,
                    body: m.body,
                    ts: m.ts,
                    client_msg_id: m.client_msg_id,
                },
                false,
            ),
            // The original, as the Stream holds it.
            Some(("D:", rest)) => {
                let mut parts = rest.splitn(4, ' ');
                let (Some(seq), Some(id), Some(ts), Some(body)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(corrupt());
                };
                let message = Message {
                    seq: seq_of(seq)?,
                    id: id.to_owned(),
                    ts: seq_of(ts)?,
                    body: body.to_owned(),
                    room: m.room,
                    from: m.from,
                    client_msg_id: m.client_msg_id,
                };
                (message, true)
            }
            // Retention trimmed the original: the retry's content with the
            // original's id and seq, which is all an ack needs.
            Some(("T:", rest)) => {
                let (seq, id) = rest.split_once(' ').ok_or_else(corrupt)?;
                let message = Message {
                    seq: seq_of(seq)?,
                    id: id.to_owned(),
                    room: m.room,
                    from: m.from,
                    body: m.body,
                    ts: m.ts,
                    client_msg_id: m.client_msg_id,
                };
                (message, true)
            }
            Some(("J:", json)) => (decode_message(json)?, true),
            _ if status == "E:noroom" => return Err(StoreError::NoRoom(m.room)),
            _ if status == "E:notmember" => {
                return Err(StoreError::NotMember {
                    room: m.room,
                    user: m.from,
                })
            }
            _ => return Err(corrupt()),
        };
        // Stored (now or before): acknowledged only once enough replicas
        // have it.
        if replicas < wanted {
            return Err(StoreError::Unavailable(format!(
                "message stored but confirmed by {replicas} of {wanted} replicas within {} ms",
                self.config.replica_ack_timeout_ms
            )));
        }
        let online =
            self.online_cache
                .settle(&message.room, cached, held == "1", version, || {
                    decode_online_pairs(online)
                })?;
        Ok(Appended {
            message,
            duplicate,
            online,
        })
    }

    async fn mark_read(&self, room: &str, user: &str, seq: u64) -> StoreResult<MarkedRead> {
        let mut reply: Vec<String> = self
            .mark_read
            .key(keys::room_meta(room))
            .key(keys::room_members(room))
            .key(keys::room_seq(room))
            .key(keys::room_reads(room))
            .key(keys::room_online(room))
            .arg(user)
            .arg(seq)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("E:noroom") => return Err(StoreError::NoRoom(room.to_owned())),
            Some("E:notmember") => {
                return Err(StoreError::NotMember {
                    room: room.to_owned(),
                    user: user.to_owned(),
                })
            }
            _ => {}
        }
        let status = reply.first().cloned().unwrap_or_default();
        let corrupt = || StoreError::Corrupt(format!("mark_read reply {status:?}"));
        if reply.len() < 2 {
            return Err(corrupt());
        }
        let online = decode_online_pairs(reply.split_off(2))?;
        let (status, marker) = reply[0].split_at_checked(2).ok_or_else(corrupt)?;
        Ok(MarkedRead {
            read_seq: marker.parse().map_err(|_| corrupt())?,
            moved: status == "M:",
            member_count: reply[1].parse().map_err(|_| corrupt())?,
            online,
        })
    }

    async fn reads(&self, room: &str) -> StoreResult<Vec<(String, u64)>> {
        // One slot: one round trip.
        let (members, markers): (Vec<String>, HashMap<String, u64>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(keys::room_members(room))
            .cmd("HGETALL")
            .arg(keys::room_reads(room))
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let mut reads: Vec<(String, u64)> = members
            .into_iter()
            .map(|u| {
                let seq = markers.get(&u).copied().unwrap_or(0);
                (u, seq)
            })
            .collect();
        reads.sort();
        Ok(reads)
    }

    async fn messages_after(
        &self,
        room: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let (entries, legacy): (Vec<LogEntry>, Vec<String>) = redis::pipe()
            .cmd("XRANGE")
            .arg(keys::room_log(room))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .cmd("ZRANGE")
            .arg(keys::room_messages(room))
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let messages = entries
            .into_iter()
            .map(|e| decode_log_entry(room, e))
            .collect::<StoreResult<Vec<_>>>()?;
        let legacy = legacy
            .iter()
            .map(|r| decode_message(r))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(merge_history(messages, legacy, limit, false))
    }

    async fn messages_before(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        if before <= 1 {
            return Ok(Vec::new());
        }
        let (entries, legacy): (Vec<LogEntry>, Vec<String>) = redis::pipe()
            .cmd("XREVRANGE")
            .arg(keys::room_log(room))
            .arg(format!("{}-0", before - 1))
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .cmd("ZRANGE")
            .arg(keys::room_messages(room))
            .arg(format!("({before}"))
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let mut messages = entries
            .into_iter()
            .map(|e| decode_log_entry(room, e))
            .collect::<StoreResult<Vec<_>>>()?;
        messages.reverse();
        let legacy = legacy
            .iter()
            .map(|r| decode_message(r))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(merge_history(messages, legacy, limit, true))
    }

    async fn latest_seqs(&self, rooms: &[&str]) -> StoreResult<Vec<u64>> {
        let cluster = self.conn()?;
        let owners = self.slots.owners(&cluster);
        let mut seq_key = String::new();
        let PerMaster { scripts, alone } = PerMaster::new(
            &owners,
            rooms,
            1,
            || LATEST_SEQS.call(),
            |script, room| {
                seq_key.clear();
                keys::push_room_seq(&mut seq_key, room);
                script.arg(seq_key.as_bytes());
            },
        );
        let reads = scripts.into_iter().map(|(master, (at, script))| {
            let cluster = &cluster;
            async move {
                let seqs = self.seqs_on(&master, script, &at, rooms, cluster).await?;
                Ok::<_, StoreError>(at.into_iter().zip(seqs))
            }
        });
        let unmapped = async {
            let here: Vec<&str> = alone.iter().map(|i| rooms[*i]).collect();
            let seqs = seqs_one_by_one(&here, &cluster).await?;
            Ok::<_, StoreError>(alone.iter().copied().zip(seqs))
        };
        let (mapped, unmapped) = tokio::try_join!(try_join_all(reads), unmapped)?;
        let mut seqs = vec![0; rooms.len()];
        for (i, seq) in mapped.into_iter().flatten().chain(unmapped) {
            seqs[i] = seq;
        }
        Ok(seqs)
    }

    async fn put_server(&self, health: &ServerHealth, ttl_ms: u64) -> StoreResult<()> {
        let json = serde_json::to_string(health).expect("health serialises");
        redis::pipe()
            .cmd("SET")
            .arg(keys::registry_server(&health.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(keys::REGISTRY_SERVERS)
            .arg(&health.id)
            .ignore()
            // What reaping scans: a server joins it with its health rather
            // than with each session (that was a registry write per
            // connect), and leaves it once reaped with nobody hosted.
            .cmd("SADD")
            .arg(keys::REGISTRY_HOSTS)
            .arg(&health.id)
            .ignore()
            .query_async::<()>(&mut self.health_conn()?)
            .await
            .map_err(unavailable)
    }

    async fn remove_server(&self, server_id: &str) -> StoreResult<()> {
        // The tickets are in the server's own slot: a command of their own,
        // sent beside the registry's pipeline.
        let mut registry = redis::pipe();
        registry
            .cmd("DEL")
            .arg(keys::registry_server(server_id))
            .ignore()
            .cmd("DEL")
            .arg(keys::registry_pending(server_id))
            .ignore()
            .cmd("SREM")
            .arg(keys::REGISTRY_SERVERS)
            .arg(server_id)
            .ignore();
        let (mut own_conn, mut registry_conn) = (self.conn()?, self.conn()?);
        tokio::try_join!(
            own_conn.del::<_, ()>(keys::server_pending(server_id)),
            registry.query_async::<()>(&mut registry_conn),
        )
        .map_err(unavailable)?;
        Ok(())
    }

    async fn servers(&self, now_ms: u64) -> StoreResult<Vec<ServerSnapshot>> {
        let mut conn = self.conn()?;
        let mut ids: Vec<String> = conn
            .smembers(keys::REGISTRY_SERVERS)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let server_keys: Vec<String> = ids.iter().map(|id| keys::registry_server(id)).collect();
        let records: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&server_keys)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut live = Vec::new();
        for (id, record) in ids.iter().zip(records) {
            match record.and_then(|r| serde_json::from_str::<ServerHealth>(&r).ok()) {
                Some(health) => live.push(health),
                None => expired.push(id.clone()),
            }
        }
        if !expired.is_empty() {
            let _: Result<i64, _> = conn.srem(keys::REGISTRY_SERVERS, &expired).await;
        }
        let shared_conn = self.conn()?;
        // No pending entries are written for a server that tracks used
        // tickets itself: nothing to count.
        let counts = try_join_all(live.iter().map(|h| {
            let mut conn = shared_conn.clone();
            let key = (!h.tracks_used_tickets).then(|| keys::pending_of(h));
            async move {
                match key {
                    Some(key) => {
                        conn.zcount::<_, _, _, u64>(key, format!("({now_ms}"), "+inf")
                            .await
                    }
                    None => Ok(0),
                }
            }
        }))
        .await
        .map_err(unavailable)?;
        for (health, pending_tickets) in live.into_iter().zip(counts) {
            out.push(ServerSnapshot {
                health,
                pending_tickets,
            });
        }
        Ok(out)
    }

    async fn add_pending_ticket(
        &self,
        server: &ServerHealth,
        ticket_id: &str,
        expires_at_ms: u64,
    ) -> StoreResult<()> {
        let key = keys::pending_of(server);
        let now = chat_protocol::now_ms();
        redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(expires_at_ms)
            .arg(ticket_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(600_000)
            .ignore()
            .query_async::<()>(&mut self.conn()?)
            .await
            .map_err(unavailable)
    }

    async fn take_pending_ticket(
        &self,
        server_id: &str,
        ticket_id: &str,
        now_ms: u64,
    ) -> StoreResult<bool> {
        // This server's own slot first; on a miss, the registry's, where
        // an API server from before `tickets_in_own_slot` wrote it (during
        // a rolling upgrade). A ticket is written to one of the two, and
        // each take is one atomic ZREM, so it is taken at most once.
        for key in [
            keys::server_pending(server_id),
            keys::registry_pending(server_id),
        ] {
            let (score, removed): (Option<f64>, i64) = redis::pipe()
                .cmd("ZSCORE")
                .arg(&key)
                .arg(ticket_id)
                .cmd("ZREM")
                .arg(&key)
                .arg(ticket_id)
                .query_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            if removed == 1 {
                return Ok(score.is_some_and(|s| s > now_ms as f64));
            }
        }
        Ok(false)
    }

    async fn set_registered(&self, cluster: &str, server_ids: &[String]) -> StoreResult<()> {
        let mut invocation = self.set_registered.prepare_invoke();
        invocation.key(keys::REGISTRY_REGISTERED).arg(cluster);
        for id in server_ids {
            invocation.arg(id);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn registered(&self) -> StoreResult<std::collections::HashSet<String>> {
        self.conn()?
            .hkeys(keys::REGISTRY_REGISTERED)
            .await
            .map_err(unavailable)
    }

    async fn expire_registrations(
        &self,
        now_ms: u64,
        unseen_for_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let mut conn = self.conn()?;
        let ids: Vec<String> = conn
            .hkeys(keys::REGISTRY_REGISTERED)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Health records are read here rather than in the script: a script
        // names every key it touches (they all share the registry's slot).
        let seen = have_health_records(&mut conn, &ids).await?;
        let mut invocation = self.expire_registrations.prepare_invoke();
        invocation
            .key(keys::REGISTRY_REGISTERED)
            .key(keys::REGISTRY_UNSEEN)
            .arg(now_ms)
            .arg(unseen_for_ms);
        for (id, seen) in ids.iter().zip(seen) {
            invocation.arg(id).arg(if seen { "1" } else { "0" });
        }
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn add_session(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
    ) -> StoreResult<SessionAdded> {
        self.add_session_with(user, location, ttl_ms, None).await
    }

    async fn add_session_announced(
        &self,
        user: &str,
        location: &SessionLocation,
        ttl_ms: u64,
        presence_max_members: u64,
    ) -> StoreResult<SessionAdded> {
        self.add_session_with(user, location, ttl_ms, Some(presence_max_members))
            .await
    }

    async fn remove_session(
        &self,
        user: &str,
        session: &str,
    ) -> StoreResult<Option<PresenceChange>> {
        let gone = self.remove_session_with(user, session, None).await?;
        Ok(gone.map(|gone| gone.change))
    }

    async fn remove_session_announced(
        &self,
        user: &str,
        session: &str,
        presence_max_members: u64,
    ) -> StoreResult<Option<WentOffline>> {
        self.remove_session_with(user, session, Some(presence_max_members))
            .await
    }

    async fn reap_dead_servers(&self, presence_max_members: u64) -> StoreResult<Vec<WentOffline>> {
        let mut conn = self.conn()?;
        let hosts: Vec<String> = conn
            .smembers(keys::REGISTRY_HOSTS)
            .await
            .map_err(unavailable)?;
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let seen = have_health_records(&mut conn, &hosts).await?;
        let dead = hosts
            .iter()
            .zip(seen)
            .filter(|(_, seen)| !seen)
            .map(|(id, _)| self.reap(id, false, presence_max_members));
        Ok(try_join_all(dead).await?.into_iter().flatten().collect())
    }

    async fn reap_silent_server(
        &self,
        server_id: &str,
        last_seen_ms: u64,
        presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>> {
        let record: Option<String> = self
            .conn()?
            .get(keys::registry_server(server_id))
            .await
            .map_err(unavailable)?;
        let reported_since = match record {
            None => false,
            Some(json) => {
                serde_json::from_str::<ServerHealth>(&json)
                    .map_err(|e| StoreError::Corrupt(format!("health of {server_id}: {e}")))?
                    .last_seen_ms
                    > last_seen_ms
            }
        };
        if reported_since {
            return Ok(Vec::new());
        }
        // Not forced: while the record lives the server stays in `hosts`,
        // and the reaper that finds the record expired finishes the job.
        self.reap(server_id, false, presence_max_members).await
    }

    async fn reap_server(
        &self,
        server_id: &str,
        presence_max_members: u64,
    ) -> StoreResult<Vec<WentOffline>> {
        self.reap(server_id, true, presence_max_members).await
    }

    async fn take_reaped_mark(&self, server_id: &str) -> StoreResult<bool> {
        let mark: Option<String> = redis::cmd("GETDEL")
            .arg(keys::server_reaped(server_id))
            .query_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        Ok(mark.is_some())
    }

    async fn presence_audience(
        &self,
        room: &str,
        max_members: u64,
    ) -> StoreResult<Option<Vec<OnlineSession>>> {
        let reply: Vec<String> = self
            .presence_audience
            .key(keys::room_members(room))
            .key(keys::room_online(room))
            .arg(max_members)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        decode_audience(reply)
    }

    async fn room_online(&self, room: &str) -> StoreResult<Arc<[OnlineSession]>> {
        let cached = self.online_cache.get(room);
        let (held_version, held_len) = OnlineCache::script_args(&cached);
        let (flat, version, held): (Vec<String>, String, String) = self
            .room_online
            .key(keys::room_online(room))
            .key(keys::room_online_version(room))
            .arg(held_version)
            .arg(held_len)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        self.online_cache
            .settle(room, cached, held == "1", version, || {
                decode_online_pairs(flat)
            })
    }

    async fn forget_online(&self, room: &str, sessions: &[String]) -> StoreResult<()> {
        self.forget_online_with(room, sessions, None).await?;
        Ok(())
    }

    async fn refresh_sessions(&self, users: &[String], ttl_ms: u64) -> StoreResult<()> {
        let shared_conn = self.conn()?;
        in_steps(users, |user| {
            let mut conn = shared_conn.clone();
            let key = keys::user_sessions(user);
            async move { conn.pexpire::<_, i64>(key, ttl_ms as i64).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn sessions_of(
        &self,
        users: &[String],
    ) -> StoreResult<HashMap<String, Vec<SessionLocation>>> {
        let shared_conn = self.conn()?;
        let all = in_steps(users, |user| {
            let mut conn = shared_conn.clone();
            let key = keys::user_sessions(user);
            async move { conn.hgetall::<_, HashMap<String, String>>(key).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(users
            .iter()
            .zip(all)
            .filter(|(_, sessions)| !sessions.is_empty())
            .map(|(user, sessions)| {
                let locations = sessions
                    .into_iter()
                    .map(|(session, server_id)| SessionLocation { session, server_id })
                    .collect();
                (user.clone(), locations)
            })
            .collect())
    }

    /// `SRANDMEMBER` of the user's rooms (bounded by `read.rooms`), then
    /// one `lua/room_servers.lua` per Redis master for its rooms, and the
    /// same reads per room where that script cannot answer. (Tried
    /// instead: one `HRANDFIELD` per room, no script; no cheaper for a
    /// user in 5 rooms, and a command per room rather than per master:
    /// docs/benchmarks.md, "Rooms kept together by placement".)
    async fn room_servers_of_user(
        &self,
        user: &str,
        read: RoomsRead,
    ) -> StoreResult<Vec<RoomServers>> {
        let cluster = self.conn()?;
        let rooms: Vec<String> = cluster
            .clone()
            .srandmember_multiple(
                keys::user_rooms(user),
                isize::try_from(read.rooms).unwrap_or(isize::MAX),
            )
            .await
            .map_err(unavailable)?;
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let owners = self.slots.owners(&cluster);
        let per_master = PerMaster::new(
            &owners,
            &rooms,
            1,
            || {
                let mut script = ROOM_SERVERS.call();
                script.arg(read.max_sessions).arg(read.sessions);
                script
            },
            |script, room| {
                script.arg(keys::room_online(room));
            },
        );
        let servers = self
            .run_per_master(
                &cluster,
                per_master,
                rooms.len(),
                &ROOM_SERVERS,
                |fields, at| decode_room_servers(fields, at.len()),
                |i| room_servers_one(&rooms[i], read, &cluster),
            )
            .await?;
        Ok(rooms
            .into_iter()
            .zip(servers)
            .filter_map(|(room, servers)| {
                Some(RoomServers {
                    room,
                    servers: servers?,
                })
            })
            .collect())
    }
}

/// `lua/room_servers.lua`'s reply for `count` rooms: each room's servers,
/// `None` for a room too large to be read.
fn decode_room_servers(reply: Vec<String>, count: usize) -> StoreResult<Vec<Option<Vec<String>>>> {
    let corrupt = || StoreError::Corrupt(format!("room servers reply for {count} rooms"));
    let mut fields = reply.into_iter();
    let mut rooms = Vec::with_capacity(count);
    for _ in 0..count {
        let n = fields.next().ok_or_else(corrupt)?;
        if n == "-1" {
            rooms.push(None);
            continue;
        }
        let n: usize = n.parse().map_err(|_| corrupt())?;
        let servers: Vec<String> = fields.by_ref().take(n).collect();
        if servers.len() != n {
            return Err(corrupt());
        }
        rooms.push(Some(servers));
    }
    match fields.next() {
        Some(_) => Err(corrupt()),
        None => Ok(rooms),
    }
}

/// `lua/room_servers.lua`'s answer for one room, through the cluster client.
async fn room_servers_one(
    room: &str,
    read: RoomsRead,
    cluster: &ClusterConnection,
) -> StoreResult<Option<Vec<String>>> {
    let key = keys::room_online(room);
    let len: u64 = cluster.clone().hlen(&key).await.map_err(unavailable)?;
    if len > read.max_sessions {
        return Ok(None);
    }
    let values: Vec<String> = if len > read.sessions {
        let sample: Vec<(String, String)> = redis::cmd("HRANDFIELD")
            .arg(&key)
            .arg(read.sessions)
            .arg("WITHVALUES")
            .query_async(&mut cluster.clone())
            .await
            .map_err(unavailable)?;
        sample.into_iter().map(|(_, value)| value).collect()
    } else {
        cluster.clone().hvals(&key).await.map_err(unavailable)?
    };
    let mut servers = Vec::new();
    for value in values {
        // An entry that does not parse is skipped, as the script does.
        if let Ok(online) = decode_online(String::new(), &value) {
            servers.push(online.server_id);
        }
    }
    servers.sort_unstable();
    servers.dedup();
    Ok(Some(servers))
}

/// Tries to reach the Redis Cluster until it answers (backing off from
/// 250 ms to 5 s), then fills `connections`. Ends when the store is gone.
async fn connect_until_reachable(client: ClusterClient, connections: Weak<ConnectionSlot>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        tokio::time::sleep(backoff).await;
        let Some(slot) = connections.upgrade() else {
            return;
        };
        match Connections::open(&client).await {
            Ok(c) => {
                let _ = slot.made.set(c);
                tracing::info!("connected to the Redis Cluster");
                return;
            }
            Err(e) => {
                slot.failed(&e);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Redis Cluster still not reachable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::ids::new_id;
    use chat_protocol::now_ms;
    use futures_util::future::join_all;

    /// A store on the test cluster (`None` without one).
    async fn test_store() -> Option<RedisStore> {
        let urls = crate::conformance::test_redis_urls()?;
        Some(
            RedisStore::connect(&urls, StoreConfig::default())
                .await
                .unwrap(),
        )
    }

    /// Runs an [`announce_rooms_script`] of `count` rooms at `master`.
    async fn announce_at_master(
        master: &Node,
        script: redis::Cmd,
        count: usize,
        cluster: &ClusterConnection,
    ) -> StoreResult<Vec<Announced>> {
        let reply = run_at_master(master, &ANNOUNCE_ROOMS, script, cluster).await;
        let fields = redis::from_redis_value::<Vec<String>>(reply.map_err(unavailable)?)
            .map_err(|e| StoreError::Corrupt(format!("announce reply: {e}")))?;
        decode_announced(fields, count)
    }

    /// Rooms of `creator` with `others`, at least 12, until every master
    /// serves enough of them for a per-master script
    /// (`ANNOUNCE_SCRIPT_MIN_ROOMS`); and those masters, sorted.
    async fn rooms_on_every_master(
        store: &RedisStore,
        owners: &SlotOwners,
        creator: &str,
        others: &[&str],
    ) -> (Vec<String>, Vec<Node>) {
        let mut rooms = Vec::new();
        let mut per_master: HashMap<Node, usize> = HashMap::new();
        while rooms.len() < 12 || per_master.values().any(|n| *n < ANNOUNCE_SCRIPT_MIN_ROOMS) {
            let room = crate::conformance::room_with(store, creator, others).await;
            let master = owners.owner(key_slot(&keys::room_members(&room))).unwrap();
            *per_master.entry(master.clone()).or_default() += 1;
            rooms.push(room);
        }
        let mut masters: Vec<Node> = per_master.into_keys().collect();
        masters.sort();
        assert!(masters.len() > 1, "the rooms should span masters");
        (rooms, masters)
    }

    /// A session on `server`.
    fn at(session: &str, server: &str) -> SessionLocation {
        SessionLocation {
            session: session.into(),
            server_id: server.into(),
        }
    }

    /// The sessions in `room`'s presence index, sorted.
    async fn index(cluster: &ClusterConnection, room: &str) -> Vec<String> {
        let mut fields: Vec<String> = cluster
            .clone()
            .hkeys(keys::room_online(room))
            .await
            .unwrap();
        fields.sort();
        fields
    }

    /// Sets the store's slot map from the cluster now (tests then set
    /// stale ones), with the per-master scripts loaded on every master (a
    /// node answers `NOSCRIPT` once otherwise: tested on its own); the
    /// store's cluster connection.
    async fn read_slot_map(store: &RedisStore) -> ClusterConnection {
        let cluster = store.conn().unwrap();
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut cluster.clone())
            .await
            .unwrap();
        store.slots.set(&slots);
        for script in [&LATEST_SEQS, &ANNOUNCE_ROOMS, &FORGET_ROOMS, &ROOM_SERVERS] {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script.code);
            let everywhere = RoutingInfo::MultiNode((
                redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                None,
            ));
            cluster
                .clone()
                .route_command(load, everywhere)
                .await
                .unwrap();
        }
        cluster
    }

    /// A reap's forgets go as one script per master with several of the
    /// rooms: each room's reaped sessions leave its index and the audience
    /// left is read where wanted, as one forget per room does; with a
    /// stale slot map (every slot "at" one master) the other masters'
    /// rooms go one by one, with the same answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reaps_forgets_go_per_master_and_one_by_one_when_the_map_is_stale() {
        let Some(store) = test_store().await else {
            return;
        };
        let (alice, bob, carol) = (new_id("u_"), new_id("u_"), new_id("u_"));
        let cluster = read_slot_map(&store).await;
        let owners = store.slots.owners(&cluster);
        let master_of = |room: &str| owners.owner(key_slot(&keys::room_members(room))).unwrap();
        let (mut rooms, _) = rooms_on_every_master(&store, &owners, &alice, &[&bob, &carol]).await;
        // One room over the audience cap (4 members, cap 3).
        let dave = new_id("u_");
        let big = crate::conformance::room_with(&store, &alice, &[&bob, &carol, &dave]).await;
        rooms.push(big.clone());
        let live = OnlineSession {
            user: alice.clone(),
            session: "s1".into(),
            server_id: "srv-live".into(),
        };
        store
            .add_session(&alice, &at("s1", "srv-live"), 60_000)
            .await
            .unwrap();
        // Bob's and carol's sessions leave every room; two rooms in three
        // want their audience.
        fn forgets(rooms: &[String]) -> Vec<RoomForget<'_>> {
            rooms
                .iter()
                .enumerate()
                .map(|(i, room)| RoomForget {
                    room,
                    sessions: vec!["s2".into(), "s3".into()],
                    audience: i % 3 != 1,
                })
                .collect()
        }
        for stale in [false, true] {
            if stale {
                let (host, port) = &**master_of(&rooms[0]);
                store.slots.set(&all_slots_at(host, *port));
            }
            for (who, session) in [(&bob, "s2"), (&carol, "s3")] {
                store
                    .add_session(who, &at(session, "srv-dead"), 60_000)
                    .await
                    .unwrap();
            }
            let forgets = forgets(&rooms);
            let forgotten = store.forget_in_rooms(&forgets, 3).await.unwrap();
            for (forget, audience) in forgets.iter().zip(forgotten) {
                let want = match (forget.audience, forget.room == big) {
                    (false, _) => None,
                    (true, true) => Some(None),
                    (true, false) => Some(Some(vec![live.clone()])),
                };
                assert_eq!(audience, want, "{} (stale map: {stale})", forget.room);
                assert_eq!(index(&cluster, forget.room).await, vec!["s1".to_owned()]);
            }
        }
    }

    /// A session's close takes it out of the indexes of all its user's
    /// rooms with one script per master holding several of them, falling
    /// back to one forget per room when the slot map is stale: either way
    /// every room forgets the session, and the last session's close
    /// answers each room's audience left (none for a session that was not
    /// the last).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_forgets_the_session_in_every_room_per_master_or_one_by_one() {
        let Some(store) = test_store().await else {
            return;
        };
        let (alice, bob) = (new_id("u_"), new_id("u_"));
        let cluster = read_slot_map(&store).await;
        let owners = store.slots.owners(&cluster);
        let master_of = |room: &str| owners.owner(key_slot(&keys::room_members(room))).unwrap();
        let (mut rooms, _) = rooms_on_every_master(&store, &owners, &alice, &[&bob]).await;
        rooms.sort();
        let bobs = OnlineSession {
            user: bob.clone(),
            session: "b1".into(),
            server_id: "srv-b".into(),
        };
        store
            .add_session(&bob, &at("b1", "srv-b"), 60_000)
            .await
            .unwrap();
        for stale in [false, true] {
            if stale {
                let (host, port) = &**master_of(&rooms[0]);
                store.slots.set(&all_slots_at(host, *port));
            }
            for session in ["a1", "a2"] {
                store
                    .add_session(&alice, &at(session, "srv-a"), 60_000)
                    .await
                    .unwrap();
            }
            let not_last = store
                .remove_session_announced(&alice, "a1", 10)
                .await
                .unwrap();
            assert_eq!(
                not_last, None,
                "alice is still online through a2 (stale map: {stale})"
            );
            for room in &rooms {
                assert_eq!(
                    index(&cluster, room).await,
                    ["a2", "b1"],
                    "{room} (stale map: {stale})"
                );
            }
            let last = store
                .remove_session_announced(&alice, "a2", 10)
                .await
                .unwrap()
                .expect("alice's last session");
            assert_eq!(last.change.rooms, rooms);
            let audiences: Vec<(String, Audience)> = rooms
                .iter()
                .map(|room| (room.clone(), Some(vec![bobs.clone()])))
                .collect();
            assert_eq!(last.presence_audiences, audiences, "stale map: {stale}");
            for room in &rooms {
                assert_eq!(
                    index(&cluster, room).await,
                    ["b1"],
                    "{room} (stale map: {stale})"
                );
            }
        }
    }

    /// A master that has not seen a per-master script answers `NOSCRIPT`
    /// without running it: the script is loaded there and the call sent
    /// again, so even the first call answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_master_without_the_script_is_given_it_and_the_call_answers() {
        let Some(store) = test_store().await else {
            return;
        };
        let cluster = read_slot_map(&store).await;
        let room = crate::conformance::room_with(&store, "alice", &[]).await;
        store
            .append(crate::conformance::msg(&room, "alice", "hi", None))
            .await
            .unwrap();
        let master = store
            .slots
            .owners(&cluster)
            .owner(key_slot(&keys::room_seq(&room)))
            .unwrap()
            .clone();
        // A text no node has seen: latest_seqs.lua with a new comment.
        let code = format!("{LATEST_SEQS_LUA}\n-- {}\n", new_id("t_"));
        let fresh = MasterScript::new(Box::leak(code.into_boxed_str()));
        let call = || {
            let mut call = fresh.call();
            call.arg(keys::room_seq(&room));
            call
        };
        let mut cached = redis::cmd("SCRIPT");
        cached.arg("EXISTS").arg(Script::new(fresh.code).get_hash());
        let at_master = |cmd: redis::Cmd| {
            let (host, port) = master.as_ref().clone();
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            let mut cluster = cluster.clone();
            async move { cluster.route_command(cmd, route).await.unwrap() }
        };
        let exists = at_master(cached.clone()).await;
        assert_eq!(
            exists,
            redis::Value::Array(vec![redis::Value::Int(0)]),
            "not cached yet"
        );
        let then = run_at_master(&master, &fresh, call(), &cluster)
            .await
            .unwrap();
        assert_eq!(
            at_master(cached).await,
            redis::Value::Array(vec![redis::Value::Int(1)])
        );
        assert_eq!(decode_seqs(then, 1), Some(vec![1]));
    }

    /// A `CLUSTER SLOTS` reply with every slot at `host:port`.
    fn all_slots_at(host: &str, port: u16) -> redis::Value {
        redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::Int(0),
            redis::Value::Int(16383),
            redis::Value::Array(vec![
                redis::Value::BulkString(host.as_bytes().to_vec()),
                redis::Value::Int(port.into()),
            ]),
        ])])
    }

    /// The catch-up reads each master's rooms in one script; keys another
    /// master serves fail it (never a wrong answer), and `latest_seqs`
    /// then reads them one by one, so a stale slot map costs time only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latest_seqs_are_read_per_master_and_one_by_one_when_the_map_is_stale() {
        let Some(store) = test_store().await else {
            return;
        };
        let mut rooms = Vec::new();
        for i in 0..12u64 {
            let room = crate::conformance::room_with(&store, "alice", &[]).await;
            for _ in 0..i % 4 {
                let message = crate::conformance::msg(&room, "alice", "hi", None);
                store.append(message).await.unwrap();
            }
            rooms.push((room, i % 4));
        }
        let names: Vec<&str> = rooms.iter().map(|(room, _)| room.as_str()).collect();
        let expected: Vec<u64> = rooms.iter().map(|(_, seq)| *seq).collect();
        let cluster = read_slot_map(&store).await;

        // Per master, one script.
        let owners = store.slots.owners(&cluster);
        let master_of = |room: &str| owners.owner(key_slot(&keys::room_seq(room))).cloned();
        let asking = |rooms: &[usize]| {
            let mut script = LATEST_SEQS.call();
            for i in rooms {
                script.arg(keys::room_seq(names[*i]));
            }
            script
        };
        let mut masters: Vec<Node> = names.iter().map(|room| master_of(room).unwrap()).collect();
        masters.sort();
        masters.dedup();
        assert!(masters.len() > 1, "the rooms should span masters");
        for master in &masters {
            let here: Vec<usize> = (0..names.len())
                .filter(|i| master_of(names[*i]).as_ref() == Some(master))
                .collect();
            let seqs = seqs_at_master(master, asking(&here), here.len(), &cluster).await;
            let want: Vec<u64> = here.iter().map(|i| expected[*i]).collect();
            assert_eq!(seqs.unwrap(), Some(want), "{master:?}");
            // A key served elsewhere fails the script (an error reply)
            // instead of reading 0.
            let elsewhere = (0..names.len())
                .find(|i| master_of(names[*i]).as_ref() != Some(master))
                .unwrap();
            let mixed = [here[0], elsewhere];
            let failed = seqs_at_master(master, asking(&mixed), 2, &cluster).await;
            assert!(!matches!(failed, Ok(Some(_))), "{failed:?}");
        }
        assert_eq!(store.latest_seqs(&names).await.unwrap(), expected);
        // In the order asked, repeats included; nothing asked, nothing read.
        let reversed: Vec<&str> = names.iter().rev().chain(&names[..1]).copied().collect();
        let mut want: Vec<u64> = expected.iter().rev().copied().collect();
        want.push(expected[0]);
        assert_eq!(store.latest_seqs(&reversed).await.unwrap(), want);
        assert!(store.latest_seqs(&[]).await.unwrap().is_empty());

        // Every slot "served" by one master: the others' rooms are read
        // one by one, with the same answer.
        let (host, port) = &*masters[0];
        store.slots.set(&all_slots_at(host, *port));
        assert_eq!(store.latest_seqs(&names).await.unwrap(), expected);
        // No map at all: every room one by one.
        store.slots.set(&redis::Value::Array(Vec::new()));
        assert_eq!(store.latest_seqs(&names).await.unwrap(), expected);
    }

    /// Placement's read goes as one script per master, and room by room
    /// when the slot map is stale or missing, with the same answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn placement_reads_rooms_per_master_and_one_by_one_when_the_map_is_stale() {
        let Some(store) = test_store().await else {
            return;
        };
        let alice = new_id("u_");
        let mut want = Vec::new();
        let mut sessions = Vec::new();
        for i in 0..12 {
            let others: Vec<String> = (0..i % 5).map(|_| new_id("u_")).collect();
            let names: Vec<&str> = others.iter().map(String::as_str).collect();
            let room = crate::conformance::room_with(&store, &alice, &names).await;
            let mut servers = Vec::new();
            for (j, other) in others.iter().enumerate() {
                // Two sessions on a server, then the other server.
                let (session, server) = (new_id("s_"), format!("srv-{}", (i + j / 2) % 2));
                store
                    .add_session(other, &at(&session, &server), 60_000)
                    .await
                    .unwrap();
                sessions.push((other.clone(), session));
                servers.push(server);
            }
            servers.sort();
            servers.dedup();
            // Four sessions are over the bound of three.
            if others.len() < 4 {
                want.push(RoomServers { room, servers });
            }
        }
        want.sort_by(|x, y| x.room.cmp(&y.room));
        // The rooms of at most 3 sessions, the servers of `sessions` of
        // each, in a stable order.
        let read_sampling = |sessions| {
            let store = &store;
            let alice = &alice;
            async move {
                let bounds = RoomsRead {
                    rooms: 100,
                    max_sessions: 3,
                    sessions,
                };
                let mut read = store.room_servers_of_user(alice, bounds).await.unwrap();
                read.sort_by(|x, y| x.room.cmp(&y.room));
                for room in &mut read {
                    room.servers.sort();
                }
                read
            }
        };
        let read = || read_sampling(16);
        let cluster = read_slot_map(&store).await;
        let owners = store.slots.owners(&cluster);
        let masters: std::collections::BTreeSet<Node> = want
            .iter()
            .map(|r| {
                owners
                    .owner(key_slot(&keys::room_online(&r.room)))
                    .unwrap()
                    .clone()
            })
            .collect();
        assert!(masters.len() > 1, "the rooms should span masters");
        // Of each room's sessions one is sampled: one of its servers.
        let sampled = || async {
            let read = read_sampling(1).await;
            for (got, all) in read.iter().zip(&want) {
                assert_eq!(got.room, all.room);
                assert_eq!(got.servers.len(), all.servers.len().min(1), "{got:?}");
                assert!(
                    got.servers.iter().all(|s| all.servers.contains(s)),
                    "{got:?}"
                );
            }
            read.len()
        };
        assert_eq!(read().await, want, "per master");
        assert_eq!(sampled().await, want.len(), "per master");
        let (host, port) = &**masters.iter().next().unwrap();
        store.slots.set(&all_slots_at(host, *port));
        assert_eq!(read().await, want, "a stale map");
        store.slots.set(&redis::Value::Array(Vec::new()));
        assert_eq!(read().await, want, "no map");
        assert_eq!(sampled().await, want.len(), "no map");
        for (user, session) in sessions {
            store.remove_session(&user, &session).await.unwrap();
        }
    }

    /// A connect announces its user in every room with one script per
    /// master: the same answers and index entries as one announce per
    /// room, and those when the slot map is stale or missing too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_users_rooms_are_announced_per_master_and_one_by_one_when_the_map_is_stale() {
        let Some(store) = test_store().await else {
            return;
        };
        let (alice, bob) = (new_id("u_"), new_id("u_"));
        let cluster = read_slot_map(&store).await;
        let owners = store.slots.owners(&cluster);
        // Some rooms with messages.
        let (made, masters) = rooms_on_every_master(&store, &owners, &alice, &[&bob]).await;
        let mut rooms = Vec::new();
        for (i, room) in made.into_iter().enumerate() {
            let seq = i as u64 % 3;
            for _ in 0..seq {
                let message = crate::conformance::msg(&room, &alice, "hi", None);
                store.append(message).await.unwrap();
            }
            rooms.push((room, Some(seq)));
        }
        let elsewhere = crate::conformance::room_with(&store, &bob, &[]).await;
        rooms.insert(4, (elsewhere, None));
        let names: Vec<String> = rooms.iter().map(|(room, _)| room.clone()).collect();

        let session = (new_id("s_"), "srv-a".to_owned());
        let own = OnlineSession {
            user: alice.clone(),
            session: session.0.clone(),
            server_id: session.1.clone(),
        };
        let sessions = [session];
        let expected = |audience: Option<Audience>| -> Vec<Announced> {
            let audience = audience.map(|a| {
                a.map(|mut sessions: Vec<OnlineSession>| {
                    sessions.sort();
                    sessions
                })
            });
            rooms
                .iter()
                .map(|(_, seq)| seq.map(|seq| (seq, audience.clone())))
                .collect()
        };
        let sorted = |mut announced: Vec<Announced>| {
            for (_, audience) in announced.iter_mut().flatten() {
                if let Some(Some(sessions)) = audience {
                    sessions.sort();
                }
            }
            announced
        };
        // Per master, one script.
        for master in &masters {
            let here: Vec<usize> = (0..names.len())
                .filter(|i| owners.owner(key_slot(&keys::room_members(&names[*i]))) == Some(master))
                .collect();
            let mut script = announce_rooms_script(&alice, "v1", "", &sessions);
            for i in &here {
                add_announced_room(&mut script, &names[*i]);
            }
            let answers = announce_at_master(master, script, here.len(), &cluster).await;
            let want: Vec<Announced> = here
                .iter()
                .map(|i| rooms[*i].1.map(|seq| (seq, None)))
                .collect();
            assert_eq!(answers.unwrap(), want, "{master:?}");
            // A room another master serves fails the script before it
            // writes anything.
            let other = (0..names.len())
                .find(|i| owners.owner(key_slot(&keys::room_members(&names[*i]))) != Some(master))
                .unwrap();
            let stranger = new_id("s_");
            let mut script =
                announce_rooms_script(&bob, "v2", "", &[(stranger.clone(), "srv-b".into())]);
            add_announced_room(&mut script, &names[here[0]]);
            add_announced_room(&mut script, &names[other]);
            assert!(announce_at_master(master, script, 2, &cluster)
                .await
                .is_err());
            let index: Vec<String> = cluster
                .clone()
                .hkeys(keys::room_online(&names[here[0]]))
                .await
                .unwrap();
            assert!(!index.contains(&stranger), "nothing written: {index:?}");
        }

        let announce = |max| store.announce_rooms(&names, &alice, &sessions, max);
        // No audience asked; then one (alice's session is in every index
        // of hers, none in bob's room); then rooms too big for one.
        assert_eq!(announce(None).await.unwrap(), expected(None));
        let audience = Some(Some(vec![own.clone()]));
        assert_eq!(
            sorted(announce(Some(10)).await.unwrap()),
            expected(audience.clone())
        );
        assert_eq!(announce(Some(1)).await.unwrap(), expected(Some(None)));
        for (room, seq) in &rooms {
            let alone = store
                .announce(room, &alice, &sessions, Some(10))
                .await
                .unwrap();
            assert_eq!(alone.map(|(s, _)| s), *seq, "{room}");
        }

        // Every slot "served" by one master: the others' rooms are
        // announced one by one, with the same answers.
        let (host, port) = &*masters[0];
        store.slots.set(&all_slots_at(host, *port));
        assert_eq!(
            sorted(announce(Some(10)).await.unwrap()),
            expected(audience.clone())
        );
        store.slots.set(&redis::Value::Array(Vec::new()));
        assert_eq!(
            sorted(announce(Some(10)).await.unwrap()),
            expected(audience)
        );
        assert!(store
            .announce_rooms(&[], &alice, &sessions, None)
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn forget_replies_are_decoded_only_when_whole() {
        let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let reply = ["0", "1", "0", "3", "1", "s1", "5:srv-au1"];
        let online = OnlineSession {
            user: "u1".into(),
            session: "s1".into(),
            server_id: "srv-a".into(),
        };
        let wants = |w: &'static [bool]| w.iter().copied();
        assert_eq!(
            decode_forgotten(fields(&reply), wants(&[false, true, true])).unwrap(),
            vec![None, Some(None), Some(Some(vec![online]))]
        );
        assert!(
            decode_forgotten(fields(&["0"]), wants(&[false, false])).is_err(),
            "too few rooms"
        );
        assert!(
            decode_forgotten(fields(&["0", "0"]), wants(&[false])).is_err(),
            "too many fields"
        );
        assert!(
            decode_forgotten(fields(&["2", "1"]), wants(&[true])).is_err(),
            "audience cut short"
        );
        assert!(
            decode_forgotten(fields(&["0"]), wants(&[true])).is_err(),
            "an audience asked for and missing"
        );
    }

    #[test]
    fn announce_replies_are_decoded_only_when_whole() {
        let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let reply = [
            "4",
            "0",
            "-1",
            "0",
            "7",
            "1",
            "0",
            "9",
            "3",
            "1",
            "s1",
            "5:srv-au1",
        ];
        let online = OnlineSession {
            user: "u1".into(),
            session: "s1".into(),
            server_id: "srv-a".into(),
        };
        assert_eq!(
            decode_announced(fields(&reply), 4).unwrap(),
            vec![
                Some((4, None)),
                None,
                Some((7, Some(None))),
                Some((9, Some(Some(vec![online])))),
            ]
        );
        assert!(
            decode_announced(fields(&["4", "0"]), 2).is_err(),
            "too few rooms"
        );
        assert!(
            decode_announced(fields(&["4", "0", "5"]), 1).is_err(),
            "too many fields"
        );
        assert!(
            decode_announced(fields(&["4", "2", "1"]), 1).is_err(),
            "audience cut short"
        );
        assert!(
            decode_announced(fields(&["x", "0"]), 1).is_err(),
            "not a seq"
        );
    }

    #[test]
    fn latest_seqs_replies_are_decoded_only_when_whole() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(decode_seqs(bulk("3 0 17"), 3), Some(vec![3, 0, 17]));
        assert_eq!(decode_seqs(bulk("7"), 1), Some(vec![7]));
        assert_eq!(decode_seqs(bulk("3 0"), 3), None, "too few");
        assert_eq!(decode_seqs(bulk("3 x 1"), 3), None, "not a seq");
        assert_eq!(decode_seqs(bulk("3  1"), 3), None, "an empty field");
        assert_eq!(decode_seqs(redis::Value::Nil, 0), None);
        let array = redis::Value::Array(vec![bulk("1")]);
        assert_eq!(decode_seqs(array, 1), None, "the old reply shape");
    }

    /// A stale slot map (a failover or resharding since it was read) sends
    /// appends to a master that does not serve their slot: it runs none of
    /// them (MOVED), and each is run alone through the cluster client, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_sent_to_the_wrong_master_run_alone_once() {
        let Some(urls) = crate::conformance::test_redis_urls() else {
            return;
        };
        let store = RedisStore::connect(&urls, StoreConfig::default())
            .await
            .unwrap();
        let group = store.group_commit.clone().expect("group commit is on");
        // Every slot "served" by the first seed node.
        let (host, port) = match redis::IntoConnectionInfo::into_connection_info(urls[0].as_str())
            .unwrap()
            .addr()
        {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => panic!("{other:?}"),
        };
        store.slots.set(&all_slots_at(&host, port));
        let mut rooms = Vec::new();
        for _ in 0..9 {
            rooms.push(crate::conformance::room_with(&store, "alice", &[]).await);
        }
        let appends = rooms.iter().map(|room| NewMessage {
            room: room.clone(),
            id: new_id("m_"),
            from: "alice".into(),
            body: "hi".into(),
            ts: now_ms(),
            client_msg_id: None,
            from_member: true,
        });
        for result in join_all(appends.map(|m| store.append(m))).await {
            assert_eq!(result.expect("append").message.seq, 1);
        }
        for room in &rooms {
            assert_eq!(store.messages_after(room, 0, 10).await.unwrap().len(), 1);
        }
        let stats = group.stats();
        assert!(stats.alone > 0, "nine rooms over three masters: {stats:?}");
    }

    /// An append whose caller holds the room's presence index at its
    /// current version is not sent it again: the list is the one kept.
    /// Another process's change (a second store here) makes the next
    /// append send it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unchanged_presence_index_is_not_sent_again() {
        let Some(urls) = crate::conformance::test_redis_urls() else {
            return;
        };
        let store = RedisStore::connect(&urls, StoreConfig::default())
            .await
            .unwrap();
        let other = RedisStore::connect(&urls, StoreConfig::default())
            .await
            .unwrap();
        let (alice, bob) = (new_id("alice-"), new_id("bob-"));
        let room = crate::conformance::room_with(&store, &alice, &[&bob]).await;
        let send = || crate::conformance::msg(&room, &alice, "hi", None);
        let server = new_id("srv-");
        let at = |session: &str| crate::SessionLocation {
            session: session.into(),
            server_id: server.clone(),
        };
        other.add_session(&bob, &at("s1"), 60_000).await.unwrap();
        let first = store.append(send()).await.unwrap().online;
        let second = store.append(send()).await.unwrap().online;
        assert_eq!(first.len(), 1);
        assert!(Arc::ptr_eq(&first, &second), "the kept list, not a new one");
        let stats = store.presence_index_stats().unwrap();
        assert_eq!((stats.sent, stats.reused), (1, 1));
        let listed = store.room_online(&room).await.unwrap();
        assert!(Arc::ptr_eq(&first, &listed), "a typing notice's read too");

        other.add_session(&bob, &at("s2"), 60_000).await.unwrap();
        let third = store.append(send()).await.unwrap().online;
        assert_eq!(third.len(), 2, "changed by another process: sent again");

        // A server of the version before writes no version: the entry
        // count still tells.
        let mut conn = other.conn().unwrap();
        let _: i64 = conn
            .hset(keys::room_online(&room), "s3", online_value(&server, &bob))
            .await
            .unwrap();
        let fourth = store.append(send()).await.unwrap().online;
        assert_eq!(fourth.len(), 3, "an index changed without a version");
        other.remove_session(&bob, "s1").await.unwrap();
        other.remove_session(&bob, "s2").await.unwrap();
        other.forget_online(&room, &["s3".into()]).await.unwrap();
    }

    /// Dedup fields became digests: a room from before may still hold a
    /// record under the text field, and a retry of that send is a
    /// duplicate for two TTLs after the room's first digest; a room made
    /// since never looks for the text.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_dedup_fields_count_for_two_ttls_in_rooms_from_before_digests() {
        use crate::conformance::{msg, room_with};
        let Some(store) = test_store().await else {
            return;
        };
        let mut conn = store.conn().unwrap();
        let alice = new_id("alice-");
        let ttl = store.config.dedup_ttl_ms.max(1);
        let text = |cmid: &str| format!("{}:{alice}{cmid}", alice.len());
        let dg = |room: &str| {
            let mut conn = store.conn().unwrap();
            let meta = keys::room_meta(room);
            async move { conn.hget::<_, _, Option<String>>(meta, "dg").await.unwrap() }
        };
        // Stores a send with `cmid`, then moves its record to the text
        // field, as a server of the version before would have written it.
        let stored_as_text = |room: String, cmid: &'static str| {
            let store = &store;
            let text = text(cmid);
            let alice = alice.clone();
            async move {
                let original = store
                    .append(msg(&room, &alice, "before", Some(cmid)))
                    .await
                    .unwrap()
                    .message;
                let window = keys::room_dedup_window(&room, now_ms() / ttl);
                let digest = keys::dedup_field(&alice, cmid);
                let mut conn = store.conn().unwrap();
                let record: String = conn.hget(&window, &digest[..]).await.unwrap();
                let _: i64 = conn.hdel(&window, &digest[..]).await.unwrap();
                let _: i64 = conn.hset(&window, text, record).await.unwrap();
                original
            }
        };

        assert_eq!(
            dg(&room_with(&store, &alice, &[]).await).await.as_deref(),
            Some("0"),
            "a new room never held text fields"
        );

        // A room from before: no `dg` yet.
        let old = room_with(&store, &alice, &[]).await;
        let _: i64 = conn.hdel(keys::room_meta(&old), "dg").await.unwrap();
        let original = stored_as_text(old.clone(), "c1").await;
        let _: i64 = conn.hdel(keys::room_meta(&old), "dg").await.unwrap();
        let retry = store
            .append(msg(&old, &alice, "before", Some("c1")))
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.message.seq, original.seq);
        let since: u64 = dg(&old).await.unwrap().parse().unwrap();
        assert!(since > 0, "the first digest's time is recorded");

        // Two TTLs after the first digest, the text is no longer read.
        let stale = stored_as_text(old.clone(), "c2").await;
        let _: i64 = conn
            .hset(keys::room_meta(&old), "dg", since - 2 * ttl)
            .await
            .unwrap();
        let late = store
            .append(msg(&old, &alice, "before", Some("c2")))
            .await
            .unwrap();
        assert!(!late.duplicate);
        assert!(late.message.seq > stale.seq);
        assert_eq!(dg(&old).await.as_deref(), Some("0"));

        // A room made since: a text field is never looked for.
        let new = room_with(&store, &alice, &[]).await;
        let _ = stored_as_text(new.clone(), "c3").await;
        let again = store
            .append(msg(&new, &alice, "before", Some("c3")))
            .await
            .unwrap();
        assert!(!again.duplicate, "text fields are not read in new rooms");
    }
}
