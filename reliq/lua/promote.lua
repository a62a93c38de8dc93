#!lua flags=allow-oom
-- Move delayed tasks (retries, scheduled tasks) whose due time has come into pending.
-- KEYS[1] delayed zset  KEYS[2] pending list  KEYS[3] task key prefix
-- ARGV[1] the most to move in one call
-- Returns the number moved; the caller calls again while it equals ARGV[1].
-- The time goes to redis.call as a string made once (Lua's sprintf of a number is dear).
local now = tostring(now_ms())
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = KEYS[3] .. id
  local state = redis.call('HGET', key, 'state')
  if state == 'scheduled' or state == 'retrying' then
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
    redis.call('LPUSH', KEYS[2], id)
  end
end
return #ids
