#!lua flags=allow-oom
-- Worker W shuts down: hand back every task it still holds and deregister.
-- KEYS[1] PROCESSING  processing list of W
-- KEYS[2] PENDING     pending list
-- KEYS[3] WORKERS     workers zset
-- KEYS[4] INFO        info hash of W
-- KEYS[5] TASK        task key prefix
-- KEYS[6] PRIO        prefix of the other priorities' pending lists (+ priority)
-- KEYS[7] PRIORITIES  flag: a list of another priority may hold ids (set as one is created)
-- KEYS[8] CANCELS     W's cancel-request set
-- KEYS[9] IDEM        idempotency key prefix
-- KEYS[10] STATS      stats hash
-- KEYS[11] WAITERS    waiters hash
-- KEYS[12] WAKE       wake-up list prefix (a cancelled task wakes its waiters)
-- KEYS[13] UNIQUE_LOCKS  unique lock prefix (a cancelled unique task frees its lock)
-- KEYS[14..17]       the keys of tasks (_lib.lua: G): a keyed task goes back at the head of
--                     its key's list, its slot given back (a cancelled one gives it back too)
-- ARGV[1] worker      W
-- ARGV[2] ttl_ms      TTL of a cancelled record (ms)
-- Returns {handed back, cancelled}. They were never finished, so the attempt does not
-- count; they go to the right end of pending (of their priority's list), oldest first, to
-- run next. A task whose cancel was asked for (its handler did not stop within the
-- drain) ends cancelled instead.
local PROCESSING, PENDING, WORKERS, INFO, TASK, PRIO = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIORITIES, CANCELS, IDEM, STATS, WAITERS, WAKE = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local UNIQUE_LOCKS = KEYS[13]
local worker, ttl_ms = ARGV[1], tonumber(ARGV[2])
local G = {groups = KEYS[14], group = KEYS[15], ring = KEYS[16], key_holds = KEYS[17], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local now = now_ms()
local ids = redis.call('LRANGE', PROCESSING, 0, -1)
local n, cancelled = 0, 0
local asked = redis.call('EXISTS', CANCELS) == 1
for _, id in ipairs(ids) do
  local key = TASK .. id
  local priority, tkey, ttype, state = unpack(redis.call('HMGET', key, 'priority', 'key', 'type', 'state'))
  if state == 'processing'
      and end_held_cancel(CANCELS, asked, key, id, IDEM, UNIQUE_LOCKS, now, ttl_ms, WAITERS, WAKE) then
    cancelled = cancelled + 1
    if tkey then group_release(G, gid_of(ttype, tkey), now) end
  elseif state == 'processing' or state == 'pending' then
    if state == 'processing' then redis.call('HINCRBY', key, 'attempts', -1) end
    hand_back(G, key, id, tkey, ttype, priority, state == 'processing', now)
    n = n + 1
  end
end
drop_worker(STATS, WORKERS, worker, PROCESSING, INFO, CANCELS, cancelled)
return {n, cancelled}
