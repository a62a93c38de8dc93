-- Record the outcome of a batch of tasks that worker W ran (the batched ack).
-- KEYS[1] processing list of W  KEYS[2] pending list  KEYS[3] delayed zset
-- KEYS[4] dead list  KEYS[5] stats hash  KEYS[6] metrics hash  KEYS[7] task key prefix
-- ARGV[1] result TTL (ms)  ARGV[2] dead-letter cap
-- ARGV[3..] groups of 8: id, outcome, text, retry delay (ms), wait (ms), run (ms),
--   wait bucket, run bucket.
--   outcome: ok (text = JSON result or ''), error | timeout (retried while failures <=
--   max_retries, else dead), permanent | unknown_type (dead at once); text = the error.
-- Returns {applied, stale}. A task no longer in W's list was reclaimed (W was taken for
-- dead): its outcome is dropped, except that a success still counts when the task has
-- not started again elsewhere — it is then taken out of pending instead of run twice.
local now = now_ms()
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local stats, metrics, prefix = KEYS[5], KEYS[6], KEYS[7]
local applied, stale = 0, 0

local function observe(ttype, outcome, wait_ms, run_ms, wait_b, run_b)
  redis.call('HINCRBY', metrics, 't|' .. ttype .. '|' .. outcome, 1)
  redis.call('HINCRBY', metrics, 'w|' .. ttype .. '|' .. wait_b, 1)
  redis.call('HINCRBY', metrics, 'ws|' .. ttype, wait_ms)
  redis.call('HINCRBY', metrics, 'r|' .. ttype .. '|' .. run_b, 1)
  redis.call('HINCRBY', metrics, 'rs|' .. ttype, run_ms)
end

for i = 3, #ARGV, 8 do
  local id, outcome, text = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = prefix .. id
  local mine = redis.call('LREM', KEYS[1], 1, id) == 1
  if not mine and outcome == 'ok' and redis.call('HGET', key, 'state') == 'pending' then
    mine = redis.call('LREM', KEYS[2], 1, id) == 1
  end
  if not mine then
    stale = stale + 1
  else
    applied = applied + 1
    local f = redis.call('HMGET', key, 'type', 'max_retries')
    observe(f[1], outcome, ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
    if outcome == 'ok' then
      redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now, 'result', text)
      redis.call('PEXPIRE', key, ttl)
      redis.call('HINCRBY', stats, 'succeeded', 1)
    elseif outcome == 'permanent' or outcome == 'unknown_type' then
      redis.call('HINCRBY', stats, 'failed', 1)
      dead_letter(KEYS[4], stats, prefix, id, outcome, text, now, cap)
    else
      redis.call('HINCRBY', stats, 'failed', 1)
      local failures = redis.call('HINCRBY', key, 'failures', 1)
      if failures <= tonumber(f[2]) then
        redis.call('HSET', key, 'state', 'retrying', 'last_error', text)
        redis.call('ZADD', KEYS[3], now + tonumber(ARGV[i + 3]), id)
        redis.call('HINCRBY', stats, 'retried', 1)
      else
        dead_letter(KEYS[4], stats, prefix, id, outcome, text, now, cap)
      end
    end
  end
end
return {applied, stale}
