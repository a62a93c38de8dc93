#!lua flags=allow-oom
-- Keep succeeded records within their retention on a quiet queue too: settle.lua trims
-- only when tasks succeed, so without this an idle queue would keep records past their
-- age. Runs on a Redis at its maxmemory (it only deletes).
-- KEYS[1] STATS    stats hash
-- KEYS[2] TASK     task key prefix
-- KEYS[3..]        succeeded lists
-- ARGV[1] budget   the most ids to remove from each list in this call
-- ARGV[2i], ARGV[2i + 1]  age (ms) and count of the list KEYS[2 + i]
-- Returns {trimmed, expired}; call again while a list may have had more to remove
-- (trimmed + expired = budget x lists).
local STATS, TASK = KEYS[1], KEYS[2]
local budget = tonumber(ARGV[1])
local now = now_ms()
local trimmed, expired = 0, 0
for i = 3, #KEYS do
  local t, e = retain(KEYS[i], TASK, now, tonumber(ARGV[2 * (i - 2)]), tonumber(ARGV[2 * (i - 2) + 1]),
                      budget)
  trimmed, expired = trimmed + t, expired + e
end
if trimmed > 0 then redis.call('HINCRBY', STATS, 'trimmed', trimmed) end
if expired > 0 then redis.call('HINCRBY', STATS, 'expired', expired) end
return {trimmed, expired}
