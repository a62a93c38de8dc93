#!lua flags=allow-oom
-- Worker W shuts down: hand back every task it still holds and deregister.
-- KEYS[1] processing list of W  KEYS[2] pending list  KEYS[3] workers zset
-- KEYS[4] info hash of W  KEYS[5] task key prefix
-- ARGV[1] W
-- Returns the number handed back. They were never finished, so the attempt does not
-- count; they go to the right end of pending, oldest first, to run next.
local now = now_ms()
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local n = 0
for _, id in ipairs(ids) do
  local key = KEYS[5] .. id
  local state = redis.call('HGET', key, 'state')
  if state == 'processing' or state == 'pending' then
    if state == 'processing' then redis.call('HINCRBY', key, 'attempts', -1) end
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
    redis.call('RPUSH', KEYS[2], id)
    n = n + 1
  end
end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
