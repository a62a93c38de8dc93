#!lua flags=allow-oom
-- Worker W says it is alive, stamped with the server's clock, and publishes its info.
-- KEYS[1] WORKERS  workers zset
-- KEYS[2] INFO     info hash of W
-- KEYS[3] METRICS  metrics hash
-- KEYS[4] CANCELS  W's cancel-request set (cancel.lua)
-- ARGV[1] worker   W
-- ARGV[2] ttl_ms   info TTL (ms)
-- ARGV[3] counts   metrics increments W carries, a JSON object {field: amount} ('{}' for
--                  none: how long W's event loop was blocked, see reliq/loopwatch.py)
-- ARGV[4..]        info field, value pairs
-- Returns {now_ms, known, id, id, ...}: known = 0 when W was not registered — at the
-- first beat, or after a reaper took W for dead and requeued its tasks (W then must not
-- trust its list); the ids are the tasks W holds whose cancel was asked for and that
-- have not ended yet: W learns of a cancel here even if it missed the pub/sub nudge.
local WORKERS, INFO, METRICS, CANCELS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
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
local out = {now, known}
for _, id in ipairs(redis.call('SMEMBERS', CANCELS)) do out[#out + 1] = id end
return out
