-- Pause a whole queue (field '*') or one task type of it: workers stop claiming what is paused.
-- KEYS[1] PAUSED  paused hash
-- ARGV[1] field   '*' or the task type
-- ARGV[2] by      who paused it (recorded with the time)
-- Returns {1, since_ms} when paused now, {0, since_ms} when it was paused already (the first
-- pause's time and author stay). A type whose held tasks are still going back (resuming) is
-- paused again: what is left in its held list stays there.
local PAUSED = KEYS[1]
local field, by = ARGV[1], ARGV[2]
local current = redis.call('HGET', PAUSED, field)
if current and string.sub(current, 1, 7) == 'paused|' then
  return {0, tonumber(string.match(current, '^paused|(%d+)|'))}
end
local now = now_ms()
redis.call('HSET', PAUSED, field, 'paused|' .. now .. '|' .. by)
return {1, now}
