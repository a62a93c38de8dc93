#!lua flags=allow-oom
-- Resume a paused queue (field '*') or type, moving up to N of the type's held ids a call
-- back to the taking end of pending (of each one's priority), in their order (oldest taken
-- first).
-- KEYS[1] PAUSED   paused hash
-- KEYS[2] PENDING  pending list
-- KEYS[3] HELD     held list of the type (unused for '*')
-- KEYS[4] TASK     task key prefix
-- KEYS[5] PRIO     prefix of the other priorities' pending lists (+ priority)
-- KEYS[6] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
-- KEYS[7..10]      the keys of tasks (_lib.lua: G): a key's marker in the held list goes
--                  back on the ring
-- ARGV[1] field    '*' or the task type
-- ARGV[2] most     N, the most ids moved this call
-- ARGV[3] first    '1' on the first call of a resume, '' on the calls that go on with it
-- Returns {code, moved, left}: CODE_OK when it was paused (or resuming), CODE_ALREADY when it
-- was not (nothing moved), CODE_PAUSED when the type was paused again meanwhile (then its
-- remaining held ids stay held).
-- While ids are left the field reads RESUMING_MARK .. (what followed PAUSED_MARK): claims
-- then take the type as usual, and the field lives until the held list is empty, so a resume cut short (a crash) shows in the
-- pause state and is finished by resuming again. Its ids are pending all along.
local PAUSED, PENDING, HELD, TASK, PRIO, PRIORITIES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local G = {groups = KEYS[7], group = KEYS[8], ring = KEYS[9], key_holds = KEYS[10], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local field, most, first = ARGV[1], tonumber(ARGV[2]), ARGV[3]
--- @format CODE
--- @format PAUSED_MARK
--- @format RESUMING_MARK
--- @format WHOLE_QUEUE
local current = redis.call('HGET', PAUSED, field)
if not current then return {CODE_ALREADY, 0, 0} end
if field == WHOLE_QUEUE then
  redis.call('HDEL', PAUSED, WHOLE_QUEUE)
  if redis.call('LLEN', PENDING) > 0 then ready_nudge(PENDING, 'resumed') end
  return {CODE_OK, 0, 0}
end
if string.sub(current, 1, #PAUSED_MARK) == PAUSED_MARK then
  if first ~= '1' then return {CODE_PAUSED, 0, 0} end
  redis.call('HSET', PAUSED, field, RESUMING_MARK .. string.sub(current, #PAUSED_MARK + 1))
end
local moved, markers = 0, 0
for _ = 1, most do
  local id = redis.call('LPOP', HELD)
  if not id then break end
  if string.byte(id, 1) == 64 then  -- '@': a key's marker (its tasks wait in their key's list)
    ring_push(G, string.sub(id, 2))
    markers = markers + 1
  else
    push_ready(PENDING, PRIO, PRIORITIES, id, redis.call('HGET', TASK .. id, 'priority'), 'RPUSH')
    moved = moved + 1
  end
end
if markers > 0 then redis.call('HINCRBY', G.groups, 'paused', -markers) end
local left = redis.call('LLEN', HELD)
if left == 0 then redis.call('HDEL', PAUSED, field) end
return {CODE_OK, moved, left}
