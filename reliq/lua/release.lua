#!lua flags=allow-oom
-- Worker W shuts down: hand back every task it still holds and deregister.
-- KEYS[1] PROCESSING  processing list of W
-- KEYS[2] PENDING     pending list
-- KEYS[3] WORKERS     workers zset
-- KEYS[4] INFO        info hash of W
-- KEYS[5] TASK        task key prefix
-- KEYS[6] PRIO        prefix of the other priorities' pending lists (+ priority)
-- KEYS[7] PRIORITIES  flag: a list of another priority may hold ids (set as one is created)
-- ARGV[1] worker      W
-- Returns the number handed back. They were never finished, so the attempt does not
-- count; they go to the right end of pending (of their priority's list), oldest first, to
-- run next.
local PROCESSING, PENDING, WORKERS, INFO, TASK, PRIO = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIORITIES = KEYS[7]
local worker = ARGV[1]
local now = now_ms()
local ids = redis.call('LRANGE', PROCESSING, 0, -1)
local n = 0
for _, id in ipairs(ids) do
  local key = TASK .. id
  local priority, state = unpack(redis.call('HMGET', key, 'priority', 'state'))
  if state == 'processing' or state == 'pending' then
    if state == 'processing' then redis.call('HINCRBY', key, 'attempts', -1) end
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
    push_ready(PENDING, PRIO, PRIORITIES, id, priority, 'RPUSH')
    n = n + 1
  end
end
redis.call('DEL', PROCESSING, INFO)
redis.call('ZREM', WORKERS, worker)
return n
