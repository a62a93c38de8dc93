#!lua flags=allow-oom
-- Worker W says it is alive, stamped with the server's clock, and publishes its info.
-- KEYS[1] workers zset  KEYS[2] info hash of W  KEYS[3] metrics hash
-- ARGV[1] W  ARGV[2] info TTL (ms)  ARGV[3] metrics increments W carries, a JSON object
--   {field: amount} ('{}' for none: how long W's event loop was blocked, see
--   reliq/loopwatch.py)  ARGV[4..] info field, value pairs
-- Returns {now_ms, known}: known = 0 when W was not registered — at the first beat, or
-- after a reaper took W for dead and requeued its tasks (W then must not trust its list).
local now = now_ms()
local known = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'last_seen', now, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
if ARGV[3] ~= '{}' then
  for field, n in pairs(cjson.decode(ARGV[3])) do
    redis.call('HINCRBY', KEYS[3], field, string.format('%d', n))
  end
end
return {now, known}
