-- Send dead-lettered tasks back to pending with a fresh retry budget.
-- KEYS[1] DEAD     dead list
-- KEYS[2] PENDING  pending list
-- KEYS[3] STATS    stats hash
-- KEYS[4] TASK     task key prefix
-- KEYS[5] PRIO     prefix of the other priorities' pending lists (+ priority): a task goes
-- KEYS[6] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
--                  back to the list of its priority
-- KEYS[7] UNIQUE_LOCKS  unique lock prefix: a unique task takes its lock back when it is free
-- KEYS[8..11]      the keys of tasks (_lib.lua: G): a keyed task goes back to its key's list
-- ARGV[1] oldest   how many to take from the oldest end, or 0: the task ids follow in ARGV[2..]
-- Returns the number requeued (ids not in the dead list are ignored).
local DEAD, PENDING, STATS, TASK, PRIO, PRIORITIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local UNIQUE_LOCKS = KEYS[7]
local G = {groups = KEYS[8], group = KEYS[9], ring = KEYS[10], key_holds = KEYS[11], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local oldest = tonumber(ARGV[1])
local ids = {}
if oldest > 0 then
  for _ = 1, oldest do
    local id = redis.call('RPOP', DEAD)
    if not id then break end
    ids[#ids + 1] = id
  end
else
  for i = 2, #ARGV do
    if redis.call('LREM', DEAD, 1, ARGV[i]) == 1 then ids[#ids + 1] = ARGV[i] end
  end
end
return requeue_dead(G, STATS, TASK, UNIQUE_LOCKS, ids, now_ms())
