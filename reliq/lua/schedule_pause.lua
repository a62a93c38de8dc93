#!lua flags=allow-oom
-- Pause or resume a periodic schedule. Slots that fall while it is paused are never run:
-- resuming moves the cursor to now (when later).
-- allow-oom: one small field; an operator may pause a schedule on a full Redis.
-- KEYS[1] SCHEDULE  the schedule's hash
-- ARGV[1] action    'pause' or 'resume'
-- ARGV[2] by        who paused it (recorded with the time)
-- Returns 1 when this changed it, 0 when it was paused (or running) already, -1 when there is
-- no such schedule.
local SCHEDULE = KEYS[1]
local action, by = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', SCHEDULE, 'version', 'paused', 'upto')
if not cur[1] then return -1 end
local now = now_ms()
if action == 'pause' then
  if cur[2] then return 0 end
  redis.call('HSET', SCHEDULE, 'paused', now .. '|' .. by)
  return 1
end
if not cur[2] then return 0 end
redis.call('HDEL', SCHEDULE, 'paused')
if tonumber(cur[3]) < now then redis.call('HSET', SCHEDULE, 'upto', now) end
return 1
