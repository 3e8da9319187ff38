#!lua flags=allow-cross-slot-keys,no-writes
-- Placement's read (`Store::room_servers_of_user`): for each room whose
-- presence index key is in ARGV[3..], all served by the node this runs on
-- (the caller groups them by master, as for lua/latest_seqs.lua), the chat
-- servers holding its live sessions. A room whose index has more than
-- ARGV[1] entries is not read: it spans every server anyway. Of a room
-- with more than ARGV[2] entries, a random sample of that many is read
-- (`HRANDFIELD`): the cost per room stays bounded on every connect's path,
-- and a sample shows where most of its sessions are.
--
-- The answer, room by room in ARGV's order: '-1' for a room not read, else
-- the number of distinct servers followed by their ids. An index entry is
-- `<len(server id)>:<server id><user>`; one that does not parse is skipped.
local max = tonumber(ARGV[1])
local sample = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
    local key = ARGV[i]
    local n = redis.call('HLEN', key)
    if n > max then
        out[#out + 1] = '-1'
    else
        local entries, first, step = nil, 1, 1
        if n > sample then
            -- Field, value, field, value...: the values are every second.
            entries, first, step = redis.call('HRANDFIELD', key, sample, 'WITHVALUES'), 2, 2
        else
            entries = redis.call('HVALS', key)
        end
        local seen, servers = {}, {}
        for e = first, #entries, step do
            local entry = entries[e]
            local colon = string.find(entry, ':', 1, true)
            local len = colon and tonumber(string.sub(entry, 1, colon - 1))
            if len then
                local server = string.sub(entry, colon + 1, colon + len)
                if not seen[server] then
                    seen[server] = true
                    servers[#servers + 1] = server
                end
            end
        end
        out[#out + 1] = tostring(#servers)
        for _, server in ipairs(servers) do
            out[#out + 1] = server
        end
    end
end
return out
