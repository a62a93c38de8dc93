#!lua flags=allow-oom
-- Move delayed tasks (retries, scheduled tasks) whose due time has come into pending.
-- KEYS[1] DELAYED  delayed zset
-- KEYS[2] PENDING  pending list
-- KEYS[3] TASK     task key prefix
-- ARGV[1] most     the most to move in one call
-- Returns the number moved; the caller calls again while it equals most.
-- The time goes to redis.call as a string made once (Lua's sprintf of a number is dear).
local DELAYED, PENDING, TASK = KEYS[1], KEYS[2], KEYS[3]
local most = ARGV[1]
local now = tostring(now_ms())
local ids = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, most)
for _, id in ipairs(ids) do
  redis.call('ZREM', DELAYED, id)
  local key = TASK .. id
  local state = redis.call('HGET', key, 'state')
  if state == 'scheduled' or state == 'retrying' then
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
    redis.call('LPUSH', PENDING, id)
  end
end
return #ids
