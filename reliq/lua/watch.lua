-- Wait for a task: read its state and, unless it has ended, mark it as waited for by a
-- hub, in one step, so an end that comes after this script is never missed (the script
-- that ends it finds the mark and pushes the id to the hub's wake-up list).
-- KEYS[1] TASK     task hash
-- KEYS[2] WAITERS  waiters hash
-- ARGV[1] id       task id
-- ARGV[2] hub
-- ARGV[3] ttl_ms   TTL of the waiters hash (ms), renewed by every wait
-- Returns the task's state ('' when there is no record); the mark is set only when the
-- state is not succeeded, dead or cancelled, and a hub is listed once however often it asks.
local TASK, WAITERS = KEYS[1], KEYS[2]
local id, hub, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', TASK, 'state')
if not state then return '' end
if END_STATES[state] then return state end
local hubs = redis.call('HGET', WAITERS, id)
if not hubs then
  redis.call('HSET', WAITERS, id, hub)
elseif not string.find(' ' .. hubs .. ' ', ' ' .. hub .. ' ', 1, true) then
  redis.call('HSET', WAITERS, id, hubs .. ' ' .. hub)
end
redis.call('PEXPIRE', WAITERS, ttl_ms)
return state
