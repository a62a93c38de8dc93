-- Shared helpers, prepended to every script by reliq/scripts.py.

-- Milliseconds on the Redis server's clock: every decision about time uses it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move a task to the dead-letter list with its reason, and keep the list within cap:
-- the oldest entries (right end) and their records are dropped first.
local function dead_letter(dead_key, stats_key, task_prefix, id, reason, err, now, cap)
  redis.call('HSET', task_prefix .. id, 'state', 'dead', 'reason', reason,
             'last_error', err, 'finished_at', now)
  redis.call('LPUSH', dead_key, id)
  redis.call('HINCRBY', stats_key, 'dead', 1)
  local over = redis.call('LLEN', dead_key) - cap
  for _ = 1, over do
    local old = redis.call('RPOP', dead_key)
    if old then redis.call('DEL', task_prefix .. old) end
  end
end
