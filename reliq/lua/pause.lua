-- Pause a whole queue (field '*') or one task type of it: workers stop claiming what is paused.
-- KEYS[1] PAUSED  paused hash
-- ARGV[1] field   '*' or the task type
-- ARGV[2] by      who paused it (recorded with the time)
-- The field's value: PAUSED_MARK .. since_ms .. SEP .. by (reliq/formats.py, read by
-- reliq/pausing.py).
-- Returns {CODE_OK, since_ms} when paused now, {CODE_ALREADY, since_ms} when it was paused
-- already (the first pause's time and author stay). A type whose held tasks are still going back (resuming) is
-- paused again: what is left in its held list stays there.
--- @format CODE
--- @format SEP
--- @format PAUSED_MARK
local PAUSED = KEYS[1]
local field, by = ARGV[1], ARGV[2]
local current = redis.call('HGET', PAUSED, field)
if current and string.sub(current, 1, #PAUSED_MARK) == PAUSED_MARK then
  return {CODE_ALREADY, tonumber(string.match(current, '^%d+', #PAUSED_MARK + 1))}
end
local now = now_ms()
redis.call('HSET', PAUSED, field, PAUSED_MARK .. now .. SEP .. by)
return {CODE_OK, now}
