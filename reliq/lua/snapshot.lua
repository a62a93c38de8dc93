-- One consistent look at a queue, for /stats and the dashboard.
-- KEYS[1] pending list  KEYS[2] delayed zset  KEYS[3] dead list  KEYS[4] workers zset
-- KEYS[5] stats hash  KEYS[6] processing list prefix  KEYS[7] task key prefix
-- KEYS[8] dead-letter archive stream  KEYS[9] paused hash  KEYS[10] held list prefix
-- Returns {now_ms, pending, delayed, dead, workers, processing, oldest queued_at
-- (-1 when nothing is pending), oldest dead task's finished_at (-1 when none),
-- archive length, held (ids of paused types set aside, counted in pending too),
-- {field, value, held, field, value, held, ...} of the paused hash,
-- counter, value, counter, value, ...}.
local workers = redis.call('ZRANGE', KEYS[4], 0, -1)
local processing = 0
for _, w in ipairs(workers) do
  processing = processing + redis.call('LLEN', KEYS[6] .. w)
end
local oldest = -1
local tail = redis.call('LINDEX', KEYS[1], -1)
if tail then
  oldest = tonumber(redis.call('HGET', KEYS[7] .. tail, 'queued_at') or -1)
end
local oldest_dead = -1
local dead_tail = redis.call('LINDEX', KEYS[3], -1)
if dead_tail then
  oldest_dead = tonumber(redis.call('HGET', KEYS[7] .. dead_tail, 'finished_at') or -1)
end
-- Held ids exist only for types in the paused hash (resume.lua deletes a field last).
local pauses, held = {}, 0
local paused = redis.call('HGETALL', KEYS[9])
for i = 1, #paused, 2 do
  local n = paused[i] == '*' and 0 or redis.call('LLEN', KEYS[10] .. paused[i])
  held = held + n
  pauses[#pauses + 1] = paused[i]
  pauses[#pauses + 1] = paused[i + 1]
  pauses[#pauses + 1] = n
end
local out = {now_ms(), redis.call('LLEN', KEYS[1]) + held, redis.call('ZCARD', KEYS[2]),
             redis.call('LLEN', KEYS[3]), #workers, processing, oldest, oldest_dead,
             redis.call('XLEN', KEYS[8]), held, pauses}
for _, v in ipairs(redis.call('HGETALL', KEYS[5])) do out[#out + 1] = v end
return out
