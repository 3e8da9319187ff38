#!lua flags=allow-cross-slot-keys,no-writes
-- The latest seq of each room whose seq key is in ARGV, all of them served
-- by the node this runs on (the caller groups them by master; a key served
-- elsewhere fails the whole call, and the caller reads one by one). One
-- call per master instead of one GET per room: the catch-up reads every
-- followed room every second. Keys in ARGV, not KEYS: Redis Cluster
-- requires declared keys to share a slot; the flag lets a script read
-- other slots of its own node (Redis 7).
--
-- The answer is one string, the seqs in ARGV's order separated by spaces
-- (0 for a room with none): one reply to build and parse instead of one
-- bulk string per room, which both sides allocate.
local seqs = {}
for i, key in ipairs(ARGV) do
    seqs[i] = redis.call('GET', key) or '0'
end
return table.concat(seqs, ' ')
