-- Record the outcome of a batch of tasks that worker W ran (the batched ack).
-- KEYS[1] processing list of W  KEYS[2] pending list  KEYS[3] delayed zset
-- KEYS[4] dead list  KEYS[5] stats hash  KEYS[6] metrics hash  KEYS[7] task key prefix
-- ARGV[1] result TTL (ms)  ARGV[2] dead-letter cap
-- ARGV[3] the batch as one JSON array of [id, type, max_retries, outcome, text,
--   retry delay (ms), wait (ms), run (ms), wait bucket, run bucket]: one argument instead
--   of ten per task, because encoding arguments is most of the worker's cost of a settle.
--   outcome: ok (text = JSON result or ''), error | timeout (retried while failures <=
--   max_retries, else dead), permanent | unknown_type (dead at once); text = the error.
-- Returns {applied, stale}. A task no longer in W's list was reclaimed (W was taken for
-- dead): its outcome is dropped, except that a success still counts when the task has
-- not started again elsewhere — it is then taken out of pending instead of run twice.
-- Counters and metrics are summed over the batch and written once per field.
local now = now_ms()
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local stats, metrics, prefix = KEYS[5], KEYS[6], KEYS[7]
local applied, stale = 0, 0
local sums = {}  -- metrics field -> amount
local counts = {}  -- stats field -> amount

local function add(tbl, field, n)
  tbl[field] = (tbl[field] or 0) + n
end

local function observe(ttype, outcome, wait_ms, run_ms, wait_b, run_b)
  add(sums, 't|' .. ttype .. '|' .. outcome, 1)
  add(sums, 'w|' .. ttype .. '|' .. wait_b, 1)
  add(sums, 'ws|' .. ttype, wait_ms)
  add(sums, 'r|' .. ttype .. '|' .. run_b, 1)
  add(sums, 'rs|' .. ttype, run_ms)
end

for _, t in ipairs(cjson.decode(ARGV[3])) do
  local id, ttype, max_retries, outcome, text = t[1], t[2], t[3], t[4], t[5]
  local key = prefix .. id
  -- From the tail (-1): W pushes claimed ids at the head, so the oldest sit at the tail.
  local mine = redis.call('LREM', KEYS[1], -1, id) == 1
  if not mine and outcome == 'ok' and redis.call('HGET', key, 'state') == 'pending' then
    mine = redis.call('LREM', KEYS[2], 1, id) == 1
  end
  if not mine then
    stale = stale + 1
  else
    applied = applied + 1
    observe(ttype, outcome, t[7], t[8], t[9], t[10])
    if outcome == 'ok' then
      redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now, 'result', text)
      redis.call('PEXPIRE', key, ttl)
      add(counts, 'succeeded', 1)
    elseif outcome == 'permanent' or outcome == 'unknown_type' then
      add(counts, 'failed', 1)
      dead_letter(KEYS[4], stats, prefix, id, outcome, text, now, cap)
    else
      add(counts, 'failed', 1)
      local failures = redis.call('HINCRBY', key, 'failures', 1)
      if failures <= max_retries then
        redis.call('HSET', key, 'state', 'retrying', 'last_error', text)
        redis.call('ZADD', KEYS[3], now + t[6], id)
        add(counts, 'retried', 1)
      else
        dead_letter(KEYS[4], stats, prefix, id, outcome, text, now, cap)
      end
    end
  end
end
-- '%d': an integer however large; a Lua number as argument may be sent in e-notation.
for field, n in pairs(sums) do redis.call('HINCRBY', metrics, field, string.format('%d', n)) end
for field, n in pairs(counts) do redis.call('HINCRBY', stats, field, string.format('%d', n)) end
return {applied, stale}
