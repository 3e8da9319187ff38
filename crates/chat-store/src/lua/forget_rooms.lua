-- The forget (`FORGET_ONLINE_LUA` in redis_store.rs) for many rooms served
-- by the node this runs on, in one call: reaping a dead server takes its
-- sessions out of thousands of rooms' presence indexes at once, and one
-- script per room was most of a reap's time. Keys in ARGV, as in
-- announce_rooms.lua (the store prepends the `allow-cross-slot-keys` flag
-- and presence_audience).
--
-- ARGV: a new version token, the audience's member cap, then for each
-- room: its online, online version and members keys, '1' if its presence
-- audience is wanted else '0', n, then n session ids.
-- Returns, for each room in order: the number of audience fields that
-- follow ('0' when not wanted), then those fields, as presence_audience
-- answers them.
--
-- A key this node does not serve fails the call, possibly after some
-- rooms were written: a room's forget is the same when run again (at most
-- a new version token), so the caller's fallback, one forget per room, is
-- safe after any failure.
local version, max = ARGV[1], ARGV[2]
local reply = {}
local i = 3
while i <= #ARGV do
  local online, online_version, members = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local want, n = ARGV[i + 3], tonumber(ARGV[i + 4])
  local removed = 0
  for s = i + 5, i + 4 + n do removed = removed + redis.call('HDEL', online, ARGV[s]) end
  if removed > 0 then redis.call('SET', online_version, version) end
  if want == '1' then
    local audience = presence_audience(members, online, max)
    reply[#reply + 1] = tostring(#audience)
    for _, v in ipairs(audience) do reply[#reply + 1] = v end
  else
    reply[#reply + 1] = '0'
  end
  i = i + 5 + n
end
return reply
