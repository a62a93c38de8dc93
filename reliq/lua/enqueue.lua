-- Enqueue one or many tasks, all or nothing.
-- KEYS[1] pending list    KEYS[2] delayed zset    KEYS[3] stats hash
-- KEYS[4] task key prefix KEYS[5] idempotency key prefix
-- KEYS[6] types hash: each type's enqueue defaults, as JSON (reliq/type_defaults.py)
-- ARGV[1] idempotency TTL (ms)
-- ARGV[2] the tasks as one JSON array of [id, type, payload, max_retries ('' = the type's
--         default, else ARGV[4]), timeout_ms
--         ('' = type default), delay_ms (0 = ready now), idempotency key ('' = none),
--         run_at_ms (0 = none; else the due time on the epoch, which wins over delay_ms),
--         traceparent ('' = none)],
--         numbers as strings: one argument instead of nine per task, because encoding
--         arguments was most of the API's cost of a batch.
-- ARGV[3] admission limit: refuse when pending holds this many tasks already (0 = none)
-- ARGV[4] the queue's max_retries, for tasks whose type has no default
-- Returns a flat array: for each task, the id that stands for it and 1 if it was
-- created now, 0 if an earlier request with the same idempotency key created it.
-- Or the error 'FULL <pending>' when the limit is reached: then nothing was written.
-- Numbers go to redis.call as strings made once: Lua turns a number into a string with
-- sprintf, which costs as much as a small command (callgrind: a third of this script).
local now = now_ms()
local now_s = tostring(now)
local idem_ttl = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 then
  local pending = redis.call('LLEN', KEYS[1])
  if pending >= limit then return redis.error_reply('FULL ' .. pending) end
end
local type_defaults = type_defaults_reader(KEYS[6])
local out = {}
local ready = {}  -- ids for pending, pushed together (in order) at the end
local created = 0
for _, t in ipairs(cjson.decode(ARGV[2])) do
  local id, idem = t[1], t[7]
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
    local due = now + tonumber(t[6])
    if tonumber(t[8]) > 0 then due = tonumber(t[8]) end
    local defaults = type_defaults(t[2])
    local max_retries = t[4]
    if max_retries == '' then max_retries = defaults.max_retries and tostring(defaults.max_retries) or ARGV[4] end
    local fields = {'type', t[2], 'payload', t[3], 'max_retries', max_retries, 'timeout_ms', t[5],
                    'attempts', '0', 'failures', '0', 'crashes', '0', 'enqueued_at', now_s}
    if t[9] ~= '' then
      fields[#fields + 1] = 'trace'
      fields[#fields + 1] = t[9]
    end
    if idem ~= '' then  -- so that deleting the task (cancel.lua) frees its key
      fields[#fields + 1] = 'idem'
      fields[#fields + 1] = idem
    end
    if due > now then
      redis.call('HSET', KEYS[4] .. id, 'state', 'scheduled', unpack(fields))
      redis.call('ZADD', KEYS[2], due, id)
    else
      redis.call('HSET', KEYS[4] .. id, 'state', 'pending', 'queued_at', now_s, unpack(fields))
      ready[#ready + 1] = id
    end
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
for i = 1, #ready, 1000 do  -- in slices: unpack has a stack limit
  redis.call('LPUSH', KEYS[1], unpack(ready, i, math.min(i + 999, #ready)))
end
if created > 0 then
  redis.call('HINCRBY', KEYS[3], 'enqueued', created)
end
return out
