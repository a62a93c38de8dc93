-- A slice of the dead-letter list with each task's type and reason, so the monitor can
-- filter and count dead tasks in one call per chunk instead of one HMGET per task.
-- KEYS[1] DEAD   dead list
-- KEYS[2] TASK   task key prefix
-- ARGV[1] start  ARGV[2] stop: LRANGE indexes, newest first
-- Returns {id, type, reason, id, type, reason, ...} ('' for a missing field).
local DEAD, TASK = KEYS[1], KEYS[2]
local start, stop = ARGV[1], ARGV[2]
local out = {}
for _, id in ipairs(redis.call('LRANGE', DEAD, start, stop)) do
  local f = redis.call('HMGET', TASK .. id, 'type', 'reason')
  out[#out + 1] = id
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
end
return out
