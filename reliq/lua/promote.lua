#!lua flags=allow-oom
-- Move delayed tasks (retries, scheduled tasks) whose due time has come into pending (the
-- list of their priority: a retry keeps it).
-- KEYS[1] DELAYED  delayed zset
-- KEYS[2] PENDING  pending list
-- KEYS[3] TASK     task key prefix
-- KEYS[4] PRIO     prefix of the other priorities' pending lists (+ priority)
-- KEYS[5] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
-- ARGV[1] most     the most to move in one call
-- Returns the number moved; the caller calls again while it equals most.
-- The time goes to redis.call as a string made once (Lua's sprintf of a number is dear).
local DELAYED, PENDING, TASK, PRIO, PRIORITIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local most = ARGV[1]
local now = tostring(now_ms())
local ids = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, most)
for _, id in ipairs(ids) do
  redis.call('ZREM', DELAYED, id)
  local key = TASK .. id
  local priority, state = unpack(redis.call('HMGET', key, 'priority', 'state'))
  if state == 'scheduled' or state == 'retrying' then
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
    push_ready(PENDING, PRIO, PRIORITIES, id, priority, 'LPUSH')
  end
end
return #ids
