#!lua flags=allow-oom
-- Cancel a task: at once when it has not started; when it is running, ask its worker.
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
-- KEYS[10] CANCELS prefix of the workers' cancel-request sets (+ worker id)
-- KEYS[11] NUDGE   prefix of the workers' cancel channels (pub/sub, + worker id)
-- KEYS[12] UNIQUE_LOCKS  unique lock prefix: a cancelled (or deleted) unique task frees its lock
-- KEYS[13] LIMITED limited list prefix: or in its type's limited list (set aside for a token)
-- KEYS[14..17]     the keys of tasks (_lib.lua: G): a keyed task waits in its key's list, and
--                  an ordered key's retry holds its key's slot ('slot' on its record)
-- ARGV[1] id       task id
-- ARGV[2] ttl_ms   TTL of the cancelled record (ms)
-- ARGV[3] mode     CANCEL_KEEP or CANCEL_FORGET (reliq/formats.py: CancelMode)
-- Returns {CODE_OK, previous state} when cancelled, {CODE_CANCELLING, 'processing'} when
-- the task is running and its worker was asked to stop it (it ends cancelled once the
-- worker has, see settle.lua; reap.lua and release.lua end it so if the worker dies or
-- stops first), {CODE_NOT_CANCELLABLE, state} when it has ended, {CODE_NO_TASK, ''} when
-- there is no such task (reliq/formats.py). With 'forget' (HTTP DELETE) the record goes
-- too, once whoever waits for the task has been woken, and so does its idempotency key
-- (a repeat of the request enqueues anew, rather than answer with a task that is gone);
-- it is counted as cancelled.
--- @format CODE
local PENDING, DELAYED, STATS, TASK, WAITERS, WAKE, IDEM, HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
                                                                 KEYS[6], KEYS[7], KEYS[8]
local PRIO, CANCELS, NUDGE, UNIQUE_LOCKS = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local LIMITED = KEYS[13]
local G = {groups = KEYS[14], group = KEYS[15], ring = KEYS[16], key_holds = KEYS[17], pending = PENDING, prio = PRIO}
local id, ttl_ms, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local key = TASK .. id
local ttype, priority, tkey, slot, state = unpack(redis.call('HMGET', key, 'type', 'priority', 'key', 'slot', 'state'))
if not state then return {CODE_NO_TASK, ''} end
if state == 'processing' then
  -- A DELETE after a POST cancel still deletes; a POST after a DELETE does not undo it.
  if mode == CANCEL_FORGET or redis.call('HGET', key, 'cancel') ~= CANCEL_FORGET then
    redis.call('HSET', key, 'cancel', mode)
  end
  redis.call('HSETNX', key, 'cancel_requested_at', now_ms())
  local worker = redis.call('HGET', key, 'worker')
  if worker then
    -- The set is what the worker's heartbeat reads back; the message only makes it sooner.
    redis.call('SADD', CANCELS .. worker, id)
    redis.call('PUBLISH', NUDGE .. worker, id)
  end
  return {CODE_CANCELLING, state}
end
if state == 'pending' then
  if tkey then  -- its key's marker may stay behind: a claim drops it if the list is empty
    if redis.call('LREM', G.group .. gid_of(ttype, tkey), 1, id) == 1 then
      redis.call('HINCRBY', G.groups, 'ready', -1)
    end
  elseif redis.call('LREM', ready_list(PENDING, PRIO, priority), 1, id) == 0
      and redis.call('LREM', HELD .. ttype, 1, id) == 0 then
    redis.call('LREM', LIMITED .. ttype, 1, id)
  end
elseif state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', DELAYED, id)
  if slot then group_release(G, gid_of(ttype, tkey), now_ms()) end
else
  return {CODE_NOT_CANCELLABLE, state}
end
redis.call('HINCRBY', STATS, 'cancelled', 1)
if redis.call('EXISTS', WAITERS) == 1 then wake(WAITERS, WAKE, {id}) end
end_cancelled(key, IDEM, UNIQUE_LOCKS, id, mode, now_ms(), ttl_ms)
return {CODE_OK, state}
