#!lua flags=allow-oom
-- Keep succeeded records within their retention on a quiet queue too: settle.lua trims
-- only when tasks succeed, so without this an idle queue would keep records past their
-- age. Runs on a Redis at its maxmemory (it only deletes).
-- KEYS[1] stats hash  KEYS[2] task key prefix  KEYS[3..] succeeded lists
-- ARGV[1] the most ids to remove from each list in this call
-- ARGV[2i], ARGV[2i + 1] age (ms) and count of the list KEYS[2 + i]
-- Returns {trimmed, expired}; call again while a list may have had more to remove
-- (trimmed + expired = ARGV[1] x lists).
local now = now_ms()
local budget = tonumber(ARGV[1])
local trimmed, expired = 0, 0
for i = 3, #KEYS do
  local t, e = retain(KEYS[i], KEYS[2], now, tonumber(ARGV[2 * (i - 2)]), tonumber(ARGV[2 * (i - 2) + 1]),
                      budget)
  trimmed, expired = trimmed + t, expired + e
end
if trimmed > 0 then redis.call('HINCRBY', KEYS[1], 'trimmed', trimmed) end
if expired > 0 then redis.call('HINCRBY', KEYS[1], 'expired', expired) end
return {trimmed, expired}
