-- Shared by the scripts that answer who should see a presence event in a
-- room (prepended to them by the store; see `Store::presence_audience`).
--
-- The audience as a reply part: {'0'} when the room has more than max
-- members (no presence events there), else {'1', then the presence index
-- as HGETALL lists it}.
local function presence_audience(members_key, online_key, max)
  if redis.call('SCARD', members_key) > tonumber(max) then return {'0'} end
  local reply = redis.call('HGETALL', online_key)
  table.insert(reply, 1, '1')
  return reply
end
