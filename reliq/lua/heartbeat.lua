-- Worker W says it is alive, stamped with the server's clock, and publishes its info.
-- KEYS[1] workers zset  KEYS[2] info hash of W
-- ARGV[1] W  ARGV[2] info TTL (ms)  ARGV[3..] info field, value pairs
-- Returns {now_ms, known}: known = 0 when W was not registered — at the first beat, or
-- after a reaper took W for dead and requeued its tasks (W then must not trust its list).
local now = now_ms()
local known = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'last_seen', now, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return {now, known}
