-- Write the progress worker W's handlers reported (ctx.progress), coalesced by W to at
-- most one value a task a second (reliq/worker/progress.py).
-- KEYS[1] TASK     task key prefix
-- ARGV[1] worker   W
-- ARGV[2] reports  JSON [[id, progress (a decimal string), message ('' = none)], ...]
-- Returns how many records were written. A task no longer running on W (it ended, or was
-- reclaimed from W) is left alone: a late report must not write into another attempt's
-- record, nor bring back one that was deleted.
local TASK = KEYS[1]
local worker, reports = ARGV[1], cjson.decode(ARGV[2])
local now = tostring(now_ms())
local n = 0
for _, p in ipairs(reports) do
  local key = TASK .. p[1]
  local f = redis.call('HMGET', key, 'worker', 'state')
  if f[2] == 'processing' and f[1] == worker then
    redis.call('HSET', key, 'progress', p[2], 'progress_message', p[3], 'progress_at', now)
    n = n + 1
  end
end
return n
