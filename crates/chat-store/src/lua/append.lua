-- Appends one message to a room: checks the room and the sender's
-- membership, deduplicates by client_msg_id, assigns the seq, stores the
-- message in the room's Stream and trims it to the retention, all in one
-- step (the keys share the room's hash tag, so one slot).
--
-- KEYS: 1 meta, 2 members, 3 seq, 4 log (the Stream), 5 this window's
--       dedup records, 6 the previous window's, 7 online, 8 reads,
--       9 legacy history (sorted set), 10 the presence index's version.
--       Every key the script may write is declared: while a slot migrates
--       between masters, Redis then refuses the whole script (ASK,
--       TRYAGAIN) instead of failing a write halfway through it. Only
--       the legacy per-send dedup key is named here; it is read before any
--       write.
-- ARGV: 1 from, 2 client_msg_id ('' for none), 3 id, 4 ts, 5 body,
--       6 retention, 7 dedup TTL ms, 8 from_member ('1': check membership,
--       move the sender's read marker), 9 dedup field (16 bytes of
--       SHA-256 of `<len(from)>:<from><client_msg_id>`), 10 this window's number,
--       11 the caller's clock (ms), 12 the version of the presence index
--       the caller holds ('' for none), 13 its number of entries.
--
-- Replies {status, the presence index as HGETALL lists it, its version,
-- held} (`online_index.lua`, prepended to this script), so routing needs
-- no further read; the index is left out when the caller holds it: a big
-- room's index is thousands of entries, and most appends find it
-- unchanged. Status:
--   N:<seq>                  stored; the caller has every other field
--   D:<seq> <id> <ts> <body> a retry: the original, read from the Stream
--   T:<seq> <id>             a retry whose original retention trimmed
--   J:<json>                 a retry answered from the legacy layout
--   E:noroom, E:notmember
--
-- Dedup records are fields of a per-room hash per window of the dedup TTL
-- (window = the caller's clock / TTL). A record is looked up in this window and the
-- previous one and written to this one, whose key expires at the end of
-- the next: every record is honoured for at least the TTL, and no key is
-- made per message. The meta field `dw` names the window whose key
-- already has its expiry, so that is set once per window, not per send.
-- Servers' clocks pick the window: one whose clock is ahead by d writes
-- into the next window d early, where a server behind does not look for
-- d; a retry would have to land in those d (milliseconds under NTP) at a
-- window's end, once per TTL, on the other server, to be stored twice.
--
-- Dedup fields were the text `<len(from)>:<from><client_msg_id>` itself
-- before they were digests (2026-12-03). The meta field `dg` is 0 in rooms
-- made since, which never held the text; otherwise it is when the room's
-- first digest was written (missing: not yet). Until two TTLs after that,
-- when the last text record has expired, a miss also looks for the text:
-- a retry of a send stored before the upgrade is still answered. After
-- that `dg` becomes 0 and misses cost nothing more.
--
-- Rooms from before the Stream (no `log` field in their meta) keep their
-- sorted set, read beside the Stream and deleted once the Stream holds
-- the retention; `log` records when the room moved, so that their
-- per-send dedup keys are still consulted for one TTL. New rooms have
-- `log` = 0.
local meta = redis.call('HMGET', KEYS[1], 'created_at', 'log', 'dw', 'dg')
if not meta[1] then return {'E:noroom', {}, '', '0'} end
if ARGV[8] == '1' and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'E:notmember', {}, '', '0'} end
local function with_online(status)
  local index, version, held = online_index(KEYS[7], KEYS[10], ARGV[12], ARGV[13])
  return {status, index, version, held}
end
local now, ttl = tonumber(ARGV[11]), tonumber(ARGV[7])
local moved = tonumber(meta[2] or '-1')
local digests = tonumber(meta[4] or '-1')
local function remember(record)
  redis.call('HSET', KEYS[5], ARGV[9], record)
  if meta[3] ~= ARGV[10] then
    redis.call('PEXPIREAT', KEYS[5], (tonumber(ARGV[10]) + 2) * ttl)
    redis.call('HSET', KEYS[1], 'dw', ARGV[10])
  end
  if digests < 0 then
    redis.call('HSET', KEYS[1], 'dg', ARGV[11])
    digests = now
  elseif digests > 0 and now >= digests + 2 * ttl then
    redis.call('HSET', KEYS[1], 'dg', '0')
    digests = 0
  end
end
if ARGV[2] ~= '' then
  local prev = redis.call('HGET', KEYS[5], ARGV[9]) or redis.call('HGET', KEYS[6], ARGV[9])
  if not prev and digests ~= 0 and (digests < 0 or now < digests + 2 * ttl) then
    local text = string.len(ARGV[1]) .. ':' .. ARGV[1] .. ARGV[2]
    prev = redis.call('HGET', KEYS[5], text) or redis.call('HGET', KEYS[6], text)
  end
  if not prev and moved ~= 0 and (moved < 0 or now < moved + ttl) then
    local room = string.sub(KEYS[1], 1, -5) -- `chat:{room:<id>}:`
    prev = redis.call('GET', room .. 'dedup:' .. ARGV[1] .. ':' .. ARGV[2])
  end
  if prev then
    -- A write, so that the WAIT after this script (which confirms this
    -- connection's writes) also confirms the original, written earlier.
    remember(prev)
    if string.sub(prev, 1, 1) == '{' then return with_online('J:' .. prev) end
    local sp = string.find(prev, ' ', 1, true)
    local pseq = string.sub(prev, 1, sp - 1)
    local entry = redis.call('XRANGE', KEYS[4], pseq .. '-0', pseq .. '-0')[1]
    if entry then
      local f = entry[2]
      return with_online('D:' .. pseq .. ' ' .. f[2] .. ' ' .. f[6] .. ' ' .. f[8])
    end
    if moved ~= 0 then
      local old = redis.call('ZRANGEBYSCORE', KEYS[9], pseq, pseq)[1]
      if old then return with_online('J:' .. old) end
    end
    return with_online('T:' .. prev)
  end
end
local seq = redis.call('INCR', KEYS[3])
-- Field order is read back by position (here and by the store's reads).
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[6], seq .. '-0',
  'i', ARGV[3], 'f', ARGV[1], 't', ARGV[4], 'b', ARGV[5], 'c', ARGV[2])
if ARGV[2] ~= '' then remember(seq .. ' ' .. ARGV[3]) end
if ARGV[8] == '1' then redis.call('HSET', KEYS[8], ARGV[1], seq) end
if moved < 0 then
  redis.call('HSET', KEYS[1], 'log', ARGV[11])
elseif moved > 0 and seq % 256 == 0 and redis.call('XLEN', KEYS[4]) >= tonumber(ARGV[6]) then
  -- The Stream alone holds the retention: the legacy history adds nothing.
  redis.call('DEL', KEYS[9])
  if now >= moved + ttl then redis.call('HSET', KEYS[1], 'log', '0') end
end
return with_online('N:' .. seq)
