-- Shared helpers, prepended to every script by reliq/scripts.py.

-- Milliseconds on the Redis server's clock: every decision about time uses it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Move a task to the dead-letter list with its reason. Nothing is dropped here: a
-- configured cap is kept by dead_trim.lua, which archives what it evicts.
local function dead_letter(dead_key, stats_key, task_prefix, id, reason, err, now)
  redis.call('HSET', task_prefix .. id, 'state', 'dead', 'reason', reason,
             'last_error', err, 'finished_at', now)
  redis.call('LPUSH', dead_key, id)
  redis.call('HINCRBY', stats_key, 'dead', 1)
end

-- Send tasks just taken out of the dead list back to pending with a fresh retry
-- budget; ids whose record is gone are skipped. Returns how many went back.
local function requeue_dead(pending_key, stats_key, task_prefix, ids, now)
  local n = 0
  for _, id in ipairs(ids) do
    local key = task_prefix .. id
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, 'state', 'pending', 'queued_at', now, 'attempts', 0,
                 'failures', 0, 'crashes', 0, 'reason', '')
      redis.call('LPUSH', pending_key, id)
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', stats_key, 'requeued', n) end
  return n
end
