-- Appends one message to a room: checks the room and the sender's
-- membership, deduplicates by client_msg_id, assigns the seq, stores the
-- message in the room's Stream and trims it to the retention, all in one
-- step (the keys share the room's hash tag, so one slot).
--
-- KEYS: 1 the room's meta, `chat:{room:<id>}:meta`. The room's other keys
--       are named from it (same hash tag, so the same slot): declaring
--       one key instead of nine saves a tenth of the script's cost
--       (bench/append-cost.py). See crates/chat-store/src/keys.rs.
-- ARGV: 1 from, 2 client_msg_id ('' for none), 3 id, 4 ts, 5 body,
--       6 retention, 7 dedup window ms, 8 from_member ('1': check
--       membership, move the sender's read marker), 9 dedup field
--       (`<len(from)>:<from><client_msg_id>`).
--
-- Replies {status, the presence index as HGETALL lists it}, so routing
-- needs no further read. Status:
--   N:<seq>                  stored; the caller has every other field
--   D:<seq> <id> <ts> <body> a retry: the original, read from the Stream
--   T:<seq> <id>             a retry whose original retention trimmed
--   J:<json>                 a retry answered from the legacy layout
--   E:noroom, E:notmember
--
-- Dedup records are fields of a per-room hash per window of the dedup
-- TTL (window = Redis time / TTL). A record is looked up in this window
-- and the previous one and written to this one, whose key expires at the
-- end of the next: every record is honoured for at least the TTL, and no
-- key is made per message. Redis's clock (TIME), not the caller's, picks
-- the window, so servers with skewed clocks agree. The meta field `dw`
-- names the window whose key already has its expiry, so that is set once
-- per window, not per send.
--
-- Rooms from before the Stream (no `log` field in their meta) keep their
-- sorted set, read beside the Stream and deleted once the Stream holds
-- the retention; `log` records when the room moved, so that their
-- per-send dedup keys are still consulted for one TTL. New rooms have
-- `log` = 0.
local room = string.sub(KEYS[1], 1, -5) -- `chat:{room:<id>}:`
local meta = redis.call('HMGET', KEYS[1], 'created_at', 'log', 'dw')
if not meta[1] then return {'E:noroom', {}} end
if ARGV[8] == '1' and redis.call('SISMEMBER', room .. 'members', ARGV[1]) == 0 then return {'E:notmember', {}} end
local function with_online(status)
  return {status, redis.call('HGETALL', room .. 'online')}
end
local ttl = tonumber(ARGV[7])
local moved = tonumber(meta[2] or '-1')
local now = 0
if ARGV[2] ~= '' or moved ~= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = math.floor(now / ttl)
local dedup = room .. 'cmids:' .. window
local function remember(record)
  redis.call('HSET', dedup, ARGV[9], record)
  if meta[3] ~= tostring(window) then
    redis.call('PEXPIREAT', dedup, (window + 2) * ttl)
    redis.call('HSET', KEYS[1], 'dw', window)
  end
end
if ARGV[2] ~= '' then
  local prev = redis.call('HGET', dedup, ARGV[9])
    or redis.call('HGET', room .. 'cmids:' .. (window - 1), ARGV[9])
  if not prev and moved ~= 0 and (moved < 0 or now < moved + ttl) then
    prev = redis.call('GET', room .. 'dedup:' .. ARGV[1] .. ':' .. ARGV[2])
  end
  if prev then
    -- A write, so that the WAIT after this script (which confirms this
    -- connection's writes) also confirms the original, written earlier.
    remember(prev)
    if string.sub(prev, 1, 1) == '{' then return with_online('J:' .. prev) end
    local sp = string.find(prev, ' ', 1, true)
    local pseq = string.sub(prev, 1, sp - 1)
    local entry = redis.call('XRANGE', room .. 'log', pseq .. '-0', pseq .. '-0')[1]
    if entry then
      local f = entry[2]
      return with_online('D:' .. pseq .. ' ' .. f[2] .. ' ' .. f[6] .. ' ' .. f[8])
    end
    if moved ~= 0 then
      local old = redis.call('ZRANGEBYSCORE', room .. 'msgs', pseq, pseq)[1]
      if old then return with_online('J:' .. old) end
    end
    return with_online('T:' .. prev)
  end
end
local seq = redis.call('INCR', room .. 'seq')
-- Field order is read back by position (here and by the store's reads).
redis.call('XADD', room .. 'log', 'MAXLEN', ARGV[6], seq .. '-0',
  'i', ARGV[3], 'f', ARGV[1], 't', ARGV[4], 'b', ARGV[5], 'c', ARGV[2])
if ARGV[2] ~= '' then remember(seq .. ' ' .. ARGV[3]) end
if ARGV[8] == '1' then redis.call('HSET', room .. 'reads', ARGV[1], seq) end
if moved < 0 then
  redis.call('HSET', KEYS[1], 'log', now)
elseif moved > 0 and seq % 256 == 0 and redis.call('XLEN', room .. 'log') >= tonumber(ARGV[6]) then
  -- The Stream alone holds the retention: the legacy history adds nothing.
  redis.call('DEL', room .. 'msgs')
  if now >= moved + ttl then redis.call('HSET', KEYS[1], 'log', '0') end
end
return with_online('N:' .. seq)
