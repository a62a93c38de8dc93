#!lua flags=allow-oom
-- Pause or resume a periodic schedule. Slots that fall while it is paused are never run:
-- resuming moves the cursor to now (when later).
-- allow-oom: one small field; an operator may pause a schedule on a full Redis.
-- KEYS[1] SCHEDULE  the schedule's hash
-- ARGV[1] pause     '1' to pause it, '' to resume it
-- ARGV[2] by        who paused it (recorded with the time: its 'paused' field is now_ms .. SEP .. by)
-- Returns CODE_OK when this changed it, CODE_ALREADY when it was paused (or running) already,
-- CODE_NO_SCHEDULE when there is no such schedule (reliq/formats.py: Code).
--- @format CODE
--- @format SEP
local SCHEDULE = KEYS[1]
local pause, by = ARGV[1] == '1', ARGV[2]
local version, paused, upto = unpack(redis.call('HMGET', SCHEDULE, 'version', 'paused', 'upto'))
if not version then return CODE_NO_SCHEDULE end
local now = now_ms()
if pause then
  if paused then return CODE_ALREADY end
  redis.call('HSET', SCHEDULE, 'paused', now .. SEP .. by)
  return CODE_OK
end
if not paused then return CODE_ALREADY end
redis.call('HDEL', SCHEDULE, 'paused')
if tonumber(upto) < now then redis.call('HSET', SCHEDULE, 'upto', now) end
return CODE_OK
