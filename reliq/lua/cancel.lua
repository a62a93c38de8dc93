#!lua flags=allow-oom
-- Cancel a task that has not started.
-- KEYS[1] pending list  KEYS[2] delayed zset  KEYS[3] stats hash  KEYS[4] task key prefix
-- KEYS[5] waiters hash  KEYS[6] wake-up list prefix (whoever waits for the task is woken)
-- KEYS[7] idempotency key prefix
-- KEYS[8] held list prefix: a pending task of a paused type may wait in its type's held list
-- ARGV[1] task id  ARGV[2] TTL of the cancelled record (ms)  ARGV[3] 'keep' or 'forget'
-- Returns {1, previous state} when cancelled, {0, state} when it is running or
-- finished, {0, ''} when there is no such task. With 'forget' (HTTP DELETE) the record
-- goes too, once whoever waits for the task has been woken, and so does its idempotency
-- key (a repeat of the request enqueues anew, rather than answer with a task that is
-- gone); it is counted as cancelled.
local key = KEYS[4] .. ARGV[1]
local state = redis.call('HGET', key, 'state')
if not state then return {0, ''} end
if state == 'pending' then
  if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
    redis.call('LREM', KEYS[8] .. redis.call('HGET', key, 'type'), 1, ARGV[1])
  end
elseif state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  return {0, state}
end
redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
if redis.call('EXISTS', KEYS[5]) == 1 then wake(KEYS[5], KEYS[6], {ARGV[1]}) end
if ARGV[3] == 'forget' then
  local idem = redis.call('HGET', key, 'idem')
  if idem and redis.call('GET', KEYS[7] .. idem) == ARGV[1] then redis.call('DEL', KEYS[7] .. idem) end
  redis.call('DEL', key)
else
  redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now_ms())
  redis.call('PEXPIRE', key, tonumber(ARGV[2]))
end
return {1, state}
