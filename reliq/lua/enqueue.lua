-- Enqueue one or many tasks, all or nothing.
-- KEYS[1] pending list    KEYS[2] delayed zset    KEYS[3] stats hash
-- KEYS[4] task key prefix KEYS[5] idempotency key prefix
-- ARGV[1] idempotency TTL (ms)
-- ARGV[2..] groups of 7: id, type, payload, max_retries, timeout_ms ('' = type default),
--           delay_ms (0 = ready now), idempotency key ('' = none)
-- Returns a flat array: for each task, the id that stands for it and 1 if it was
-- created now, 0 if an earlier request with the same idempotency key created it.
local now = now_ms()
local idem_ttl = tonumber(ARGV[1])
local out = {}
local created = 0
for i = 2, #ARGV, 7 do
  local id, idem = ARGV[i], ARGV[i + 6]
  local existing = false
  if idem ~= '' then
    existing = redis.call('GET', KEYS[5] .. idem)
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    if idem ~= '' then
      redis.call('SET', KEYS[5] .. idem, id, 'PX', idem_ttl)
    end
    local delay = tonumber(ARGV[i + 5])
    local key = KEYS[4] .. id
    redis.call('HSET', key, 'type', ARGV[i + 1], 'payload', ARGV[i + 2],
               'max_retries', ARGV[i + 3], 'timeout_ms', ARGV[i + 4],
               'attempts', 0, 'failures', 0, 'crashes', 0, 'enqueued_at', now)
    if delay > 0 then
      redis.call('HSET', key, 'state', 'scheduled')
      redis.call('ZADD', KEYS[2], now + delay, id)
    else
      redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
      redis.call('LPUSH', KEYS[1], id)
    end
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if created > 0 then
  redis.call('HINCRBY', KEYS[3], 'enqueued', created)
end
return out
