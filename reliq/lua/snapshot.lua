-- One consistent look at a queue, for /stats and the dashboard.
-- KEYS[1] PENDING     pending list
-- KEYS[2] DELAYED     delayed zset
-- KEYS[3] DEAD        dead list
-- KEYS[4] WORKERS     workers zset
-- KEYS[5] STATS       stats hash
-- KEYS[6] PROCESSING  processing list prefix (+ worker id)
-- KEYS[7] TASK        task key prefix
-- KEYS[8] ARCHIVE     dead-letter archive stream
-- KEYS[9] PAUSED      paused hash
-- KEYS[10] HELD       held list prefix (+ task type)
-- Returns {now_ms, pending, delayed, dead, workers, processing, oldest queued_at
-- (-1 when nothing is pending), oldest dead task's finished_at (-1 when none),
-- archive length, held (ids of paused types set aside, counted in pending too),
-- {field, value, held, field, value, held, ...} of the paused hash,
-- counter, value, counter, value, ...}.
local PENDING, DELAYED, DEAD, WORKERS, STATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local PROCESSING, TASK, ARCHIVE, PAUSED, HELD = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local workers = redis.call('ZRANGE', WORKERS, 0, -1)
local processing = 0
for _, w in ipairs(workers) do
  processing = processing + redis.call('LLEN', PROCESSING .. w)
end
local oldest = -1
local tail = redis.call('LINDEX', PENDING, -1)
if tail then
  oldest = tonumber(redis.call('HGET', TASK .. tail, 'queued_at') or -1)
end
local oldest_dead = -1
local dead_tail = redis.call('LINDEX', DEAD, -1)
if dead_tail then
  oldest_dead = tonumber(redis.call('HGET', TASK .. dead_tail, 'finished_at') or -1)
end
-- Held ids exist only for types in the paused hash (resume.lua deletes a field last).
local pauses, held = {}, 0
local paused = redis.call('HGETALL', PAUSED)
for i = 1, #paused, 2 do
  local n = paused[i] == '*' and 0 or redis.call('LLEN', HELD .. paused[i])
  held = held + n
  pauses[#pauses + 1] = paused[i]
  pauses[#pauses + 1] = paused[i + 1]
  pauses[#pauses + 1] = n
end
local out = {now_ms(), redis.call('LLEN', PENDING) + held, redis.call('ZCARD', DELAYED),
             redis.call('LLEN', DEAD), #workers, processing, oldest, oldest_dead,
             redis.call('XLEN', ARCHIVE), held, pauses}
for _, v in ipairs(redis.call('HGETALL', STATS)) do out[#out + 1] = v end
return out
