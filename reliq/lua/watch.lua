-- Wait for a task: read its state and, unless it has ended, mark it as waited for by a
-- hub, in one step, so an end that comes after this script is never missed (the script
-- that ends it finds the mark and pushes the id to the hub's wake-up list).
-- KEYS[1] task hash  KEYS[2] waiters hash
-- ARGV[1] task id  ARGV[2] hub  ARGV[3] TTL of the waiters hash (ms), renewed by every wait
-- Returns the task's state ('' when there is no record); the mark is set only when the
-- state is not succeeded, dead or cancelled, and a hub is listed once however often it asks.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'succeeded' or state == 'dead' or state == 'cancelled' then return state end
local hubs = redis.call('HGET', KEYS[2], ARGV[1])
if not hubs then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
elseif not string.find(' ' .. hubs .. ' ', ' ' .. ARGV[2] .. ' ', 1, true) then
  redis.call('HSET', KEYS[2], ARGV[1], hubs .. ' ' .. ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return state
