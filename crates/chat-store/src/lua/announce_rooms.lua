-- The announce (`ANNOUNCE_LUA` in redis_store.rs) for each of a user's
-- rooms served by the node this runs on, in one call: a connect announces
-- its user in every room, and one script per room was most of a connect's
-- cost for users in many rooms. Keys in ARGV, as in latest_seqs.lua (the
-- store prepends the `allow-cross-slot-keys` flag and presence_audience).
--
-- ARGV: user, a new version token, the audience's member cap ('' for no
-- audience), n, then n session and index value pairs, then for each room
-- its members, online, seq and online version keys.
-- Returns, for each room in order: its latest seq, or '-1' when the user
-- is not a member (nothing written there); the number of audience fields
-- that follow; those fields, as presence_audience answers them.
--
-- Every room's membership is read before any room is written, so a key
-- this node does not serve fails the call before it writes. (A slot moving
-- key by key could still fail it later: each room's writes are the same
-- when run again, so the caller's fallback, one announce per room, is safe
-- after any failure.)
local user, version, max = ARGV[1], ARGV[2], ARGV[3]
local first = 5 + 2 * tonumber(ARGV[4])
local member = {}
for i = first, #ARGV, 4 do
  member[i] = redis.call('SISMEMBER', ARGV[i], user) == 1
end
local reply = {}
for i = first, #ARGV, 4 do
  if not member[i] then
    reply[#reply + 1] = '-1'
    reply[#reply + 1] = '0'
  else
    for s = 5, first - 1, 2 do redis.call('HSET', ARGV[i + 1], ARGV[s], ARGV[s + 1]) end
    redis.call('SET', ARGV[i + 3], version)
    reply[#reply + 1] = redis.call('GET', ARGV[i + 2]) or '0'
    if max == '' then
      reply[#reply + 1] = '0'
    else
      local audience = presence_audience(ARGV[i], ARGV[i + 1], max)
      reply[#reply + 1] = tostring(#audience)
      for _, v in ipairs(audience) do reply[#reply + 1] = v end
    end
  end
end
return reply
