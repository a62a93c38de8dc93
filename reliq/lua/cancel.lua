#!lua flags=allow-oom
-- Cancel a task that has not started.
-- KEYS[1] PENDING  pending list
-- KEYS[2] DELAYED  delayed zset
-- KEYS[3] STATS    stats hash
-- KEYS[4] TASK     task key prefix
-- KEYS[5] WAITERS  waiters hash
-- KEYS[6] WAKE     wake-up list prefix (whoever waits for the task is woken)
-- KEYS[7] IDEM     idempotency key prefix
-- KEYS[8] HELD     held list prefix: a pending task of a paused type may wait in its type's
--                  held list
-- KEYS[9] PRIO     prefix of the other priorities' pending lists (+ priority)
-- ARGV[1] id       task id
-- ARGV[2] ttl_ms   TTL of the cancelled record (ms)
-- ARGV[3] mode     'keep' or 'forget'
-- Returns {CODE_OK, previous state} when cancelled, {CODE_NOT_CANCELLABLE, state} when it
-- is running or finished, {CODE_NO_TASK, ''} when there is no such task (reliq/formats.py). With 'forget' (HTTP DELETE) the record
-- goes too, once whoever waits for the task has been woken, and so does its idempotency
-- key (a repeat of the request enqueues anew, rather than answer with a task that is
-- gone); it is counted as cancelled.
--- @format CODE
local PENDING, DELAYED, STATS, TASK, WAITERS, WAKE, IDEM, HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
                                                                 KEYS[6], KEYS[7], KEYS[8]
local PRIO = KEYS[9]
local id, ttl_ms, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local key = TASK .. id
local state = redis.call('HGET', key, 'state')
if not state then return {CODE_NO_TASK, ''} end
if state == 'pending' then
  local ttype, priority = unpack(redis.call('HMGET', key, 'type', 'priority'))
  if redis.call('LREM', ready_list(PENDING, PRIO, priority), 1, id) == 0 then
    redis.call('LREM', HELD .. ttype, 1, id)
  end
elseif state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', DELAYED, id)
else
  return {CODE_NOT_CANCELLABLE, state}
end
redis.call('HINCRBY', STATS, 'cancelled', 1)
if redis.call('EXISTS', WAITERS) == 1 then wake(WAITERS, WAKE, {id}) end
if mode == 'forget' then
  local idem = redis.call('HGET', key, 'idem')
  if idem and redis.call('GET', IDEM .. idem) == id then redis.call('DEL', IDEM .. idem) end
  redis.call('DEL', key)
else
  redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now_ms())
  redis.call('PEXPIRE', key, ttl_ms)
end
return {CODE_OK, state}
