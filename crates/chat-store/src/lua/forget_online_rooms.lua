#!lua flags=allow-cross-slot-keys
-- FORGET_ONLINE_LUA (redis_store.rs) for many rooms of the node this runs
-- on, in one call: a user's last session closing, or a dead server's user
-- reaped, leaves every room of the user. Keys in ARGV, as in
-- latest_seqs.lua.
--
-- ARGV: a new version token, n, n session ids, then for each room its
-- online and online version keys. Returns the entries removed.
-- A room's writes are the same when run again: after a failure (a key this
-- node does not serve), the caller forgets room by room.
local version = ARGV[1]
local first = 3 + tonumber(ARGV[2])
local removed = 0
for i = first, #ARGV, 2 do
  local here = 0
  for s = 3, first - 1 do here = here + redis.call('HDEL', ARGV[i], ARGV[s]) end
  if here > 0 then redis.call('SET', ARGV[i + 1], version) end
  removed = removed + here
end
return removed
