//! The Redis key layout, in one place (mirrored in the README, "Redis key layout").
//!
//! Every key starts with `chat:` and carries a hash tag in braces. Keys that
//! must change together share the tag, so one Lua script or MULTI touches
//! one slot of the cluster:
//!
//! | key | type | contents |
//! |---|---|---|
//! | `chat:{room:<id>}:meta` | hash | `name`, `created_by`, `created_at`, `joins` (joins are recorded), `log` (0: history always a Stream; else ms when it moved to one), `dw` (the dedup window whose key has its expiry), `dg` (0: dedup fields always digests; else ms of the room's first digest) |
//! | `chat:{room:<id>}:members` | set | user ids (authoritative membership) |
//! | `chat:{room:<id>}:seq` | string | last assigned seq |
//! | `chat:{room:<id>}:log` | stream | the history: entry id `<seq>-0`, fields `i` id, `f` from, `t` ts, `b` body, `c` client_msg_id (empty for none); trimmed to the retention |
//! | `chat:{room:<id>}:cmids:<window>` | hash | dedup records, the first 16 bytes of SHA-256(`<len(user)>:<user><client_msg_id>`) -> `<seq> <id>` (rooms from before may hold the text itself for two TTLs), one hash per dedup-TTL window (the server's clock / TTL), expiring at the end of the next window |
//! | `chat:{room:<id>}:msgs` | sorted set | legacy history (before the Stream): message JSON scored by seq; read beside the Stream until the Stream holds the retention |
//! | `chat:{room:<id>}:dedup:<user>:<client_msg_id>` | string | legacy dedup record: `<seq> <id>` (older: the JSON), expires after the dedup TTL; consulted for one TTL after the room moved |
//! | `chat:{room:<id>}:reads` | hash | user -> read marker (seq), members only; moved forward by reads and by the member's own sends |
//! | `chat:{room:<id>}:joined` | hash | user -> the room's seq when the user was added, for members added after creation (creation members joined at 0) |
//! | `chat:{room:<id>}:online` | hash | session id -> `<len(server id)>:<server id><user>`: the presence index routing reads (members' live sessions) |
//! | `chat:{user:<id>}:rooms` | set | room ids (index derived from the member sets) |
//! | `chat:{user:<id>}:sessions` | hash | session id -> chat server id, expires unless refreshed |
//! | `chat:{registry}:servers` | set | chat server ids that reported health |
//! | `chat:{registry}:server:<id>` | string | health JSON, expires after the dead-after interval |
//! | `chat:{server:<id>}:pending` | sorted set | unused ticket ids scored by expiry, for a chat server that takes them from its own slot (`tickets_in_own_slot` in its health) and does not remember used tickets itself (no `tracks_used_tickets`) |
//! | `chat:{registry}:pending:<id>` | sorted set | the same for servers from before that (read only for them, and by a take that missed the key above) |
//! | `chat:{registry}:hosts` | set | chat server ids that reported health or hold sessions: what presence reaping scans |
//! | `chat:{server:<id>}:hosted` | set | users with sessions on that chat server, for reaping when it dies |
//! | `chat:{registry}:hosted:<id>` | set | the same, written by chat servers from before the set moved to their own slot; reaping reads both |
//! | `chat:{server:<id>}:reaped` | string, expires in 60 s | set by a reaper before it takes that server's sessions and after its last forget in the rooms' indexes; the server takes it (`GETDEL`) at each health report and, finding it, announces its sessions again |
//! | `chat:{server:<id>}:reaping:<list>:<chunk>` | string, expires in seconds | a reaper's claim on one chunk of a dead server's users (`<list>`: a digest of the user list the chunks were cut from), so concurrent reapers share the users instead of each trying all |
//! | `chat:{registry}:registered` | hash | server id -> owning ChatCluster (`namespace/name`), written by the operator |
//! | `chat:{registry}:unseen` | hash | registered server id -> ms since when it has had no health record (expiry of registrations) |
//!
//! The registry shares one slot on purpose: it is small, written once a
//! second per server, and read as a whole by placement. What changes once
//! per connect (pending tickets, hosted users) is in a slot per chat
//! server instead: in the registry's, every connect of the whole cluster
//! cost that one master a write and a take and an `SADD`
//! (docs/benchmarks.md, "Connects in the sixth sitting"). A server joins
//! `hosts` with its health, not per connect.

use sha2::{Digest, Sha256};

pub fn room_meta(room: &str) -> String {
    format!("chat:{{room:{room}}}:meta")
}
pub fn room_members(room: &str) -> String {
    format!("chat:{{room:{room}}}:members")
}
pub fn room_seq(room: &str) -> String {
    let mut key = String::new();
    push_room_seq(&mut key, room);
    key
}
/// [`room_seq`] appended to `key`, for a caller that writes many keys into
/// one buffer (the catch-up's reads: `format!` took half of their time).
pub fn push_room_seq(key: &mut String, room: &str) {
    key.push_str("chat:{room:");
    key.push_str(room);
    key.push_str("}:seq");
}
/// Legacy: the history as a sorted set (before the Stream).
pub fn room_messages(room: &str) -> String {
    format!("chat:{{room:{room}}}:msgs")
}
pub fn room_log(room: &str) -> String {
    format!("chat:{{room:{room}}}:log")
}
/// The room's dedup records written in one window of the dedup TTL
/// (`window` = ms since the epoch / TTL).
pub fn room_dedup_window(room: &str, window: u64) -> String {
    format!("chat:{{room:{room}}}:cmids:{window}")
}
/// A dedup record's field in a window: the first 16 bytes of the SHA-256
/// of `<len(user)>:<user><client_msg_id>` (length-prefixed, so no user id
/// and client_msg_id pair can spell another's). The field is kept for
/// every send with a client_msg_id for one to two TTLs: 16 bytes instead of
/// the text (47 with our clients' ids and a 10-character user id) saves 32
/// of a record's 150 bytes (docs/benchmarks.md, "Dedup records by
/// digest"). 128 bits: a chance
/// collision among even billions of records is beyond reach, and a
/// crafted one would need a SHA-256 prefix collision. The field before
/// (the text itself) is built by the append script for rooms that may
/// still hold it.
pub fn dedup_field(user: &str, client_msg_id: &str) -> [u8; 16] {
    // Per send: the length is formatted on the stack, not in a String.
    let mut len = itoa::Buffer::new();
    let mut hash = Sha256::new();
    hash.update(len.format(user.len()));
    hash.update(b":");
    hash.update(user);
    hash.update(client_msg_id);
    let mut field = [0u8; 16];
    field.copy_from_slice(&hash.finalize()[..16]);
    field
}
/// Legacy: a dedup record as a key of its own (before the windows). The
/// append script names this key itself (`lua/append.lua`, read only,
/// before any write, for rooms that moved less than a TTL ago) so that
/// new rooms do not pay for building it: keep the two in step.
pub fn room_dedup(room: &str, user: &str, client_msg_id: &str) -> String {
    format!("chat:{{room:{room}}}:dedup:{user}:{client_msg_id}")
}
pub fn room_reads(room: &str) -> String {
    format!("chat:{{room:{room}}}:reads")
}
pub fn room_joined(room: &str) -> String {
    format!("chat:{{room:{room}}}:joined")
}
pub fn room_online(room: &str) -> String {
    format!("chat:{{room:{room}}}:online")
}
/// A random token that every change to the room's presence index
/// rewrites, in the same step: appends return the index only to callers
/// whose copy is of another version.
pub fn room_online_version(room: &str) -> String {
    format!("chat:{{room:{room}}}:online:v")
}
pub fn user_rooms(user: &str) -> String {
    format!("chat:{{user:{user}}}:rooms")
}
pub fn user_sessions(user: &str) -> String {
    format!("chat:{{user:{user}}}:sessions")
}
pub const REGISTRY_SERVERS: &str = "chat:{registry}:servers";
pub const REGISTRY_REGISTERED: &str = "chat:{registry}:registered";
pub const REGISTRY_UNSEEN: &str = "chat:{registry}:unseen";
pub fn registry_server(server_id: &str) -> String {
    format!("chat:{{registry}}:server:{server_id}")
}
pub const REGISTRY_HOSTS: &str = "chat:{registry}:hosts";
/// The users with sessions on a chat server, in the server's own slot.
pub fn server_hosted(server_id: &str) -> String {
    format!("chat:{{server:{server_id}}}:hosted")
}
/// The mark a reaper leaves on a server whose sessions it takes.
pub fn server_reaped(server_id: &str) -> String {
    format!("chat:{{server:{server_id}}}:reaped")
}
/// A reaper's claim on chunk `chunk` of a dead server's user list (its
/// [`user_list_digest`] `list`), in the server's own slot.
pub fn server_reap_claim(server_id: &str, list: u64, chunk: usize) -> String {
    format!("chat:{{server:{server_id}}}:reaping:{list:016x}:{chunk}")
}
/// Names the user list a reap's chunks were cut from: reapers that read
/// the same list share its claims. SHA-256 as for [`dedup_field`], so
/// that every process and release agrees.
pub fn user_list_digest(users: &[String]) -> u64 {
    let mut hash = Sha256::new();
    for user in users {
        hash.update(user);
        hash.update([0u8]);
    }
    let mut digest = [0u8; 8];
    digest.copy_from_slice(&hash.finalize()[..8]);
    u64::from_be_bytes(digest)
}
/// Legacy: the same in the registry's slot, written by chat servers from
/// before [`server_hosted`]; reaping reads it too.
pub fn registry_hosted(server_id: &str) -> String {
    format!("chat:{{registry}}:hosted:{server_id}")
}
/// A chat server's pending tickets in its own slot.
pub fn server_pending(server_id: &str) -> String {
    format!("chat:{{server:{server_id}}}:pending")
}
/// Legacy: a chat server's pending tickets in the registry's slot, for
/// servers whose health does not say `tickets_in_own_slot`.
pub fn registry_pending(server_id: &str) -> String {
    format!("chat:{{registry}}:pending:{server_id}")
}
/// Where the API server writes a ticket for `server`, and where that
/// server looks first.
pub fn pending_of(server: &crate::ServerHealth) -> String {
    if server.tickets_in_own_slot {
        server_pending(&server.id)
    } else {
        registry_pending(&server.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The substring Redis Cluster hashes: the first `{...}` with content.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    /// Key names are stored data: the seq key read by the catch-up must be
    /// the one the append script increments, under its old name.
    #[test]
    fn the_seq_key_is_the_same_written_alone_or_into_a_buffer() {
        assert_eq!(room_seq("r_abc"), "chat:{room:r_abc}:seq");
        let mut key = String::from("chat:{room:r_abc}:seq");
        key.clear();
        push_room_seq(&mut key, "r_x");
        assert_eq!(key, "chat:{room:r_x}:seq");
    }

    #[test]
    fn keys_of_one_room_share_a_hash_tag() {
        let room = "r_abc";
        let meta = room_meta(room);
        let tag = hash_tag(&meta);
        for key in [
            room_members(room),
            room_seq(room),
            room_messages(room),
            room_log(room),
            room_dedup_window(room, 20_000),
            room_dedup(room, "alice", "c{1}"),
            room_online(room),
            room_online_version(room),
            room_reads(room),
            room_joined(room),
        ] {
            assert_eq!(hash_tag(&key), tag, "{key}");
        }
    }

    #[test]
    fn keys_of_one_user_and_the_registry_share_their_tags() {
        assert_eq!(
            hash_tag(&user_rooms("bob")),
            hash_tag(&user_sessions("bob"))
        );
        assert_eq!(hash_tag(REGISTRY_SERVERS), hash_tag(&registry_server("s1")));
        assert_eq!(
            hash_tag(REGISTRY_SERVERS),
            hash_tag(&registry_pending("s1"))
        );
        assert_eq!(hash_tag(REGISTRY_SERVERS), hash_tag(REGISTRY_HOSTS));
        assert_eq!(hash_tag(REGISTRY_SERVERS), hash_tag(REGISTRY_REGISTERED));
        assert_eq!(hash_tag(REGISTRY_SERVERS), hash_tag(REGISTRY_UNSEEN));
        assert_eq!(hash_tag(REGISTRY_SERVERS), hash_tag(&registry_hosted("s1")));
        assert_ne!(hash_tag(&user_rooms("bob")), hash_tag(&room_meta("bob")));
    }

    #[test]
    fn health_from_before_own_slot_tickets_names_the_registry_slot() {
        // What a chat server of the previous release writes: no
        // `tickets_in_own_slot`. Its tickets must go where it looks.
        let old: crate::ServerHealth = serde_json::from_str(
            r#"{"id":"s1","url":"ws://a/ws","internal_url":"http://a","state":"ready","connections":0,"load":0.0,"last_seen_ms":1}"#,
        )
        .unwrap();
        assert!(!old.tickets_in_own_slot);
        assert_eq!(pending_of(&old), registry_pending("s1"));
        let new = crate::ServerHealth {
            tickets_in_own_slot: true,
            ..old
        };
        assert_eq!(pending_of(&new), server_pending("s1"));
    }

    #[test]
    fn pending_tickets_leave_the_registry_slot_for_their_servers_own() {
        let a = crate::slot_owners::key_slot(&server_pending("chat-0"));
        let b = crate::slot_owners::key_slot(&server_pending("chat-1"));
        let registry = crate::slot_owners::key_slot(REGISTRY_SERVERS);
        assert_ne!(a, b, "two servers' tickets hash apart");
        assert!(a != registry && b != registry);
        assert_eq!(
            hash_tag(&server_hosted("chat-0")),
            hash_tag(&server_pending("chat-0"))
        );
    }

    /// The field is what the docs, the append script's comment and
    /// `bench/append-cost.py` say: a SHA-256 prefix of the
    /// length-prefixed text, so a pair cannot spell another's.
    #[test]
    fn dedup_fields_are_the_sha256_prefix_of_the_length_prefixed_text() {
        let text = Sha256::digest("12:alice-123456c_1");
        assert_eq!(dedup_field("alice-123456", "c_1")[..], text[..16]);
        assert_ne!(dedup_field("alice", "c_1"), dedup_field("alicec", "_1"));
    }
}
