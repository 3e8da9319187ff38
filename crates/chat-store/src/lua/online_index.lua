-- Shared by the scripts that read a room's presence index for routing
-- (prepended to them by the store; see `online_cache.rs`).
--
-- The index as a reply part: {index as HGETALL lists it, its version,
-- held}. The version is a random token every change to the index writes
-- beside it (one slot, one step). When it is the caller's (held_version)
-- and the entry count is the caller's too (held_len), the index is left
-- out and held is '1': the caller has it. The count catches servers of
-- the version before this one, which change the index without writing a
-- version.
local function online_index(online_key, version_key, held_version, held_len)
  local version = redis.call('GET', version_key) or ''
  if version ~= '' and version == held_version
    and redis.call('HLEN', online_key) == tonumber(held_len) then
    return {}, version, '1'
  end
  return redis.call('HGETALL', online_key), version, '0'
end
