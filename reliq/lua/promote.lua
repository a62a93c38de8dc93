#!lua flags=allow-oom
-- Move delayed tasks (retries, scheduled tasks) whose due time has come into pending (the
-- list of their priority: a retry keeps it).
-- KEYS[1] DELAYED  delayed zset
-- KEYS[2] PENDING  pending list
-- KEYS[3] TASK     task key prefix
-- KEYS[4] PRIO     prefix of the other priorities' pending lists (+ priority)
-- KEYS[5] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
-- KEYS[6..9]       the keys of tasks (_lib.lua: G): a keyed task goes onto its key's list
--                  (the far end; an ordered key's retry that kept its slot, 'slot' on its
--                  record, at the taking end, and the slot given back)
-- ARGV[1] most     the most to move in one call
-- Returns the number moved; the caller calls again while it equals most.
-- The time goes to redis.call as a string made once (Lua's sprintf of a number is dear).
local DELAYED, PENDING, TASK, PRIO, PRIORITIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local G = {groups = KEYS[6], group = KEYS[7], ring = KEYS[8], key_holds = KEYS[9], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local most = ARGV[1]
local clock = now_ms()
local now = tostring(clock)
local ids = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, most)
for _, id in ipairs(ids) do
  redis.call('ZREM', DELAYED, id)
  local key = TASK .. id
  local priority, tkey, ttype, slot, state = unpack(redis.call('HMGET', key, 'priority', 'key', 'type', 'slot',
                                                                 'state'))
  if state == 'scheduled' or state == 'retrying' then
    queue_again(key, now)
    make_ready(G, id, tkey, ttype, priority, slot == '1', slot == '1', clock)
    if slot then redis.call('HDEL', key, 'slot') end
  end
end
return #ids
