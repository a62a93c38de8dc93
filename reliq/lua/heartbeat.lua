#!lua flags=allow-oom
-- Worker W says it is alive, stamped with the server's clock, and publishes its info.
-- KEYS[1] WORKERS  workers zset
-- KEYS[2] INFO     info hash of W
-- KEYS[3] METRICS  metrics hash
-- ARGV[1] worker   W
-- ARGV[2] ttl_ms   info TTL (ms)
-- ARGV[3] counts   metrics increments W carries, a JSON object {field: amount} ('{}' for
--                  none: how long W's event loop was blocked, see reliq/loopwatch.py)
-- ARGV[4..]        info field, value pairs
-- Returns {now_ms, known}: known = 0 when W was not registered — at the first beat, or
-- after a reaper took W for dead and requeued its tasks (W then must not trust its list).
local WORKERS, INFO, METRICS = KEYS[1], KEYS[2], KEYS[3]
local worker, ttl_ms, counts = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local known = redis.call('ZSCORE', WORKERS, worker) and 1 or 0
redis.call('ZADD', WORKERS, now, worker)
redis.call('HSET', INFO, 'last_seen', now, unpack(ARGV, 4))
redis.call('PEXPIRE', INFO, ttl_ms)
if counts ~= '{}' then
  for field, n in pairs(cjson.decode(counts)) do
    redis.call('HINCRBY', METRICS, field, string.format('%d', n))
  end
end
return {now, known}
