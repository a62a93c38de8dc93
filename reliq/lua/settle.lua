#!lua flags=allow-oom
-- Record the outcome of a batch of tasks that worker W ran (the batched ack).
-- KEYS[1] PROCESSING  processing list of W
-- KEYS[2] PENDING     pending list
-- KEYS[3] DELAYED     delayed zset
-- KEYS[4] DEAD        dead list
-- KEYS[5] STATS       stats hash
-- KEYS[6] METRICS     metrics hash
-- KEYS[7] TASK        task key prefix
-- KEYS[8] SUCCEEDED   succeeded list: the ids of kept succeeded records, newest at the left
--                     (of the types without a retention of their own)
-- KEYS[9] SUCCEEDED_OF  prefix of the per-type such lists (+ task type)
-- KEYS[10] WAITERS    waiters hash
-- KEYS[11] WAKE       wake-up list prefix: a task that ends (succeeded, dead) while someone
--                     waits for it wakes them (_lib.lua: wake, one HMGET a batch); one
--                     EXISTS a batch when nobody waits on the queue
-- KEYS[12] PRIO       prefix of the other priorities' pending lists (+ priority)
-- KEYS[13] CANCELS    W's cancel-request set: see "Cancelled" below
-- KEYS[14] IDEM       idempotency key prefix (a cancelled 'forget' record goes with its key)
-- KEYS[15] UNIQUE_LOCKS  unique lock prefix: a unique task that ends frees its lock (its
--                     name is in the batch, read by the claim: a task without one costs no
--                     read here)
-- KEYS[16] LIMITS     limits hash (an ordered key's retry keeps its slot)
-- KEYS[17] LIMITED    limited list prefix (+ task type)
-- KEYS[18] LIMITED_DUE  zset type -> when its set-aside tasks are due
-- KEYS[19..22]        the keys of tasks (_lib.lua: G): groups hash, key list prefix, ring,
--                     key holds
-- ARGV[1] keep_age    retention of succeeded records: age (ms)
-- ARGV[2] batch       the batch as one flat JSON array, SETTLE_FIELDS (reliq/formats.py) a
--                     task one after another: one argument instead of eleven per task, because encoding
--                     arguments is most of the worker's cost of a settle. outcome: ok (text
--                     = JSON result or ''; the record becomes compact, see KEPT), error |
--                     timeout (retried while failures <= max_retries, else dead), permanent
--                     | unknown_type (dead at once); text = the error. snooze (reliq.Snooze):
--                     back to scheduled after the retry delay, its attempt given back and no
--                     failure counted (stats: snoozed). cancelled: W stopped the handler on
--                     a cancel request.
-- ARGV[3] sums        the batch's metrics, summed by W: a JSON object {field: amount} of the
--                     fields observe() below writes a task. Summing them here cost as much
--                     as the rest of the script; the script only takes back the share of a
--                     stale task.
-- ARGV[4] keep_count  retention of succeeded records: count (0 = keep none)
-- ARGV[5] own         the retention of the batch's types that have their own, as JSON
--                     {type: [age (ms), count]} ('{}' = none): their ids go to the list
--                     SUCCEEDED_OF .. type.
-- ARGV[6] progressed  JSON array of the batch's ids whose handlers reported progress
--                     (ctx.progress; '[]' or absent = none): a success or a retry drops those
--                     fields too. Named, so that every other task pays nothing for them.
-- ARGV[7] succeeded   the plain successes, apart: a flat JSON array, the first four of
--                     SETTLE_FIELDS a task (SETTLE_OK: id, type, text, more) of tasks that
--                     succeeded whose records are small listpacks of format 2 (record 's'),
--                     with no unique lock, key or progress ('[]' or absent = none): 4 values
--                     a task to decode, not 8, and a loop that does only what they need.
-- A keyed task gives its key's slot back (group_release), except the retry (or snooze) of
-- an ordered key, which keeps it until promote.lua puts it back at the head of its key.
-- outcome rate_limited (reliq.RateLimited): the task goes back pending with its attempt
-- undone, at the taking end of its key's list (the key held retry_delay_ms) or of its
-- type's limited list (the type held that long); counted rate_limited, not failed.
-- Every outcome but ok adds an entry to the task's run history (_lib.lua: note_run; one
-- HMGET and one HSET of the record): a success adds none and reads none (a rewritten
-- record, below, takes its 'runs' along), so only the runs that fail pay for it.
-- Returns {applied, stale}. A task no longer in W's list was reclaimed (W was taken for
-- dead): its outcome is dropped, except that a success still counts when the task has
-- not started again elsewhere — it is then taken out of pending (its priority's list)
-- instead of run twice.
-- Counters and metrics are written once per field a batch. Succeeded records past their
-- list's count (trimmed) or age (expired) are deleted and counted: see settle_list().
-- Dead-lettered tasks are in no such list: they stay until someone handles them.
-- Cancelled: a task whose cancel was asked for while it ran (cancel.lua: in W's
-- cancel-request set) ends cancelled, never retried, snoozed nor dead-lettered, whatever
-- its outcome — except ok: a handler that finished before W could stop it keeps its
-- success (its effects happened), and the request is dropped. One EXISTS a batch when
-- no cancel is outstanding. A cancelled record is kept keep_age ms.
-- Numbers go to redis.call as strings made once: Lua turns a number into a string with
-- sprintf, which costs as much as a small command.
-- What a succeeded task's record keeps (with state, finished_at and result): what
-- GET /task and waiting show. The rest (DROPPED) goes. A hash that once held a value
-- over 64 bytes (hash-max-listpack-value: a payload, usually) stays a hash table, ~60
-- bytes a field more than the listpack a new small hash gets, so such a record is
-- written anew (MEMORY USAGE ~1,250 -> ~260 bytes with a 200-byte payload).
local KEPT = {'type', 'attempts', 'failures', 'crashes', 'enqueued_at', 'started_at', 'priority', 'runs', 'worker',
              'queued_at', 'key'}
local DROPPED = {'payload', 'opts', 'max_retries', 'worker', 'queued_at', 'last_error', 'reason'}
local DROPPED_KEYED = {'key', unpack(DROPPED)}  -- (a field a record lacks costs HDEL a scan)
--- @format SETTLE_FIELDS
--- @format SETTLE_MORE
--- @format METRIC
--- @format SEP
--- @format LIMIT_FIELDS
--- @format LIMIT_PATTERN
local PROCESSING, PENDING, DELAYED, DEAD, STATS, METRICS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local TASK, SUCCEEDED, SUCCEEDED_OF, WAITERS, WAKE, PRIO = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local CANCELS, IDEM, UNIQUE_LOCKS = KEYS[13], KEYS[14], KEYS[15]
local LIMITS, LIMITED, LIMITED_DUE = KEYS[16], KEYS[17], KEYS[18]
local G = {groups = KEYS[19], group = KEYS[20], ring = KEYS[21], key_holds = KEYS[22], pending = PENDING, prio = PRIO}
local keep_age, batch, keep_count = tonumber(ARGV[1]), cjson.decode(ARGV[2]), tonumber(ARGV[4])
local sums = cjson.decode(ARGV[3])  -- metrics field -> amount
-- A task's SETTLE_MORE, read only by what needs it (a failure, a stale outcome).
local MORE_PATTERN = '^' .. string.rep('([^' .. SEP .. ']*)' .. SEP, #SETTLE_MORE - 1) .. '([^' .. SEP .. ']*)$'
local function more(more_s)
  return {string.match(more_s, MORE_PATTERN)}
end
local own = cjson.decode(ARGV[5])  -- type -> {age, count}
local succeeded = (ARGV[7] and ARGV[7] ~= '[]') and cjson.decode(ARGV[7]) or {}
local progressed = false  -- id -> true: its record holds progress fields (false: none does)
if ARGV[6] and ARGV[6] ~= '[]' then
  progressed = {}
  for _, id in ipairs(cjson.decode(ARGV[6])) do progressed[id] = true end
end
local now = now_ms()
local now_s = tostring(now)
local finished = {}  -- succeeded list -> {age, count, new ids}
local applied, stale = 0, 0
local waited = redis.call('EXISTS', WAITERS) == 1
local ended_ids = {}  -- tasks that ended, when someone waits on this queue
local function ended(id, lock)  -- lock: the name of its unique lock ('' or nil: none, or freed already)
  unique_release(UNIQUE_LOCKS, lock, id)
  if waited then ended_ids[#ended_ids + 1] = id end
end
local counts = {}  -- stats field -> amount
local cancels = redis.call('EXISTS', CANCELS) == 1

local function add(tbl, field, n)
  tbl[field] = (tbl[field] or 0) + n
end

local ordered = {}  -- type -> whether its keys run in order: read once a type, for keyed retries only
local function is_ordered(ttype)
  if ordered[ttype] == nil then
    ordered[ttype] = select(ORDERED, string.match(redis.call('HGET', LIMITS, ttype) or '', LIMIT_PATTERN)) == '1'
  end
  return ordered[ttype]
end

-- A keyed task going to the delayed set (a retry, a snooze) keeps its key's slot when the
-- key is ordered, so that no later task of its key overtakes it (promote.lua gives it back).
local function keeps_slot(key, ttype, gid)
  if not (gid and is_ordered(ttype)) then return false end
  redis.call('HSET', key, 'slot', '1')
  return true
end

-- RateLimited: back to pending with the attempt undone, first in line once the hold ends.
local function held_back(id, ttype, gid, until_ms)
  redis.call('HINCRBY', TASK .. id, 'attempts', -1)
  queue_again(TASK .. id, now_s)
  if gid then
    local h = redis.call('HGET', G.groups, 'h:' .. gid)
    if not h or tonumber(h) < until_ms then redis.call('HSET', G.groups, 'h:' .. gid, until_ms) end
    group_push(G, gid, id, true, now)
  else
    redis.call('RPUSH', LIMITED .. ttype, id)
    redis.call('ZADD', LIMITED_DUE, 'GT', until_ms, ttype)
  end
end

-- The metrics fields of one task, as W sums them (reliq/queue.py: Queue.settle; the kinds
-- are reliq/formats.py's Metric).
local function observe(ttype, outcome, wait_ms, run_ms, wait_b, run_b, sign)
  add(sums, METRIC_RUNS .. SEP .. ttype .. SEP .. outcome, sign)
  add(sums, METRIC_WAIT .. SEP .. ttype .. SEP .. wait_b, sign)
  add(sums, METRIC_WAIT_SUM .. SEP .. ttype, sign * wait_ms)
  add(sums, METRIC_RUN .. SEP .. ttype .. SEP .. run_b, sign)
  add(sums, METRIC_RUN_SUM .. SEP .. ttype, sign * run_ms)
end

-- Taking an id out of W's list: one LREM each (from the tail, -1: W pushes claimed ids
-- at the head, so the oldest sit there), or, when the batch is a good part of the list,
-- one read of the list and one rewrite of what is left: an LREM costs as much as
-- moving several ids.
local list = nil
local held = {}
if (#batch / #SETTLE_FIELDS + #succeeded / MORE) * 4 >= redis.call('LLEN', PROCESSING) then  -- tasks, a quarter of the list
  list = redis.call('LRANGE', PROCESSING, 0, -1)
  for _, id in ipairs(list) do held[id] = true end
end
local taken = 0
local function take(id)
  if not list then return redis.call('LREM', PROCESSING, -1, id) == 1 end
  if not held[id] then return false end
  held[id] = nil
  taken = taken + 1
  return true
end

-- A succeeded id joins its list (SUCCEEDED, or its type's own); with a count of 0 its
-- record goes at once.
local QUEUE_RETENTION = {keep_age, keep_count}
local function keep(key, id, ttype)
  local r, into = own[ttype], SUCCEEDED
  if r then into = SUCCEEDED_OF .. ttype else r = QUEUE_RETENTION end
  if r[2] == 0 then
    redis.call('DEL', key)
    add(counts, 'trimmed', 1)
    return
  end
  local l = finished[into]
  if not l then
    l = {r[1], r[2], {}}
    finished[into] = l
  end
  l[3][#l[3] + 1] = id
end

-- A success counted, its record kept (keep).
local function kept(key, id, ttype)
  keep(key, id, ttype)
  add(counts, 'succeeded', 1)
end

-- A success whose record is a listpack of format 2 with nothing more to drop: its payload
-- goes as the HSET that marks it succeeded blanks its body (one command). No result (a
-- handler that returned None) writes none: a field less (~1,800 instructions).
local function succeed_small(key, id, ttype, text)
  if text == '' then
    redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now_s, 'body', '')
  else
    redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now_s, 'result', text, 'body', '')
  end
  keep(key, id, ttype)
end

-- A list gets its new ids, then loses what is past its limits (retain(), _lib.lua): at
-- most two ids a new one and 8 more a call, so the work stays bounded and a list shrinks
-- back within a few calls after its limits were lowered.
local function settle_list(into, age, count, ids)
  for i = 1, #ids, 1000 do  -- in slices: unpack has a stack limit
    redis.call('LPUSH', into, unpack(ids, i, math.min(i + 999, #ids)))
  end
  local trimmed, expired = retain(into, TASK, now, age, count, 2 * #ids + 8)
  if trimmed > 0 then add(counts, 'trimmed', trimmed) end
  if expired > 0 then add(counts, 'expired', expired) end
end

-- One task's outcome (the batch's values of it, mine: it was in W's list, now taken out).
local function settle_one(id, ttype, outcome, text, unique, tkey, record, more_s, mine)
  local key = TASK .. id
  local gid = tkey ~= '' and gid_of(ttype, tkey)
  local slot = mine  -- the task holds its key's slot (if it has a key)
  if not mine and outcome == 'ok' then  -- the reaper that requeued it gave the slot back
    local priority, state = unpack(redis.call('HMGET', key, 'priority', 'state'))
    local from = gid and G.group .. gid or ready_list(PENDING, PRIO, priority)
    mine = state == 'pending' and redis.call('LREM', from, 1, id) == 1
    if mine and gid then redis.call('HINCRBY', G.groups, 'ready', -1) end
  end
  if not mine then
    stale = stale + 1
    local m = more(more_s)
    observe(ttype, outcome, tonumber(m[WAIT_MS]), tonumber(m[RUN_MS]), m[WAIT_BUCKET], m[RUN_BUCKET], -1)
  else
    applied = applied + 1
    local cancel = cancels and cancel_request(CANCELS, cancels, key, id)  -- no call a task when none is asked
    if outcome == 'cancelled' or (cancel and outcome ~= 'ok') then
      note_run(key, 'cancelled', text, now_s, 'cancelled')
      end_cancelled(key, IDEM, UNIQUE_LOCKS, id, cancel or redis.call('HGET', key, 'cancel') or CANCEL_KEEP, now_s,
                    keep_age)
      add(counts, 'cancelled', 1)
      add(counts, 'cancelled_running', 1)
      ended(id, nil)
    elseif outcome == 'rate_limited' then
      note_run(key, outcome, text, now_s, 'pending')
      held_back(id, ttype, gid, now + tonumber(more(more_s)[RETRY_DELAY_MS]))
      add(counts, 'rate_limited', 1)
    elseif outcome == 'ok' then
      if cancel then redis.call('HDEL', key, 'cancel', 'cancel_requested_at') end  -- too late: it succeeded
      -- The compact record (see KEPT), so that a success frees memory (also on a Redis
      -- at its maxmemory) instead of adding to it. A small record (a listpack) loses the
      -- fields it no longer needs; a hash table is written anew (callgrind: the rewrite
      -- costs ~23,000 instructions a task more than the HDEL).
      -- record 's': the worker knows the record is a listpack of format 2 (SETTLE_FIELDS),
      -- which spares a command a task (~7,000 instructions); else Redis is asked. Format 2
      -- drops the payload by blanking the body in the HSET that marks it succeeded: one
      -- command (an HDEL of the fields format 1 drops cost ~14,000 instructions more).
      local small = record == 's'
      if small or redis.call('OBJECT', 'ENCODING', key) == 'listpack' then
        if record == '1' then
          redis.call('HDEL', key, unpack(gid and DROPPED_KEYED or DROPPED))
        elseif not small then  -- an earlier run's error (its runs keep it)
          redis.call('HDEL', key, 'last_error', 'reason')
        end
        if unique ~= '' then redis.call('HDEL', key, 'unique') end  -- freed below; only such tasks pay it
        if progressed and progressed[id] then clear_progress(key) end
        if record ~= '1' then
          succeed_small(key, id, ttype, text)
          add(counts, 'succeeded', 1)
        else
          redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now_s, 'result', text)
          kept(key, id, ttype)
        end
      else
        local f = redis.call('HMGET', key, unpack(KEPT))
        redis.call('DEL', key)
        redis.call('HSET', key, 'state', 'succeeded', 'finished_at', now_s, 'result', text,
                   'type', f[1] or ttype, 'attempts', f[2] or '1', 'failures', f[3] or '0',
                   'crashes', f[4] or '0', 'enqueued_at', f[5] or f[10] or now_s, 'started_at', f[6] or now_s)
        if f[7] then redis.call('HSET', key, 'priority', f[7]) end  -- only a task not of the default has one
        if f[8] then redis.call('HSET', key, 'runs', f[8]) end  -- only a task that failed (snoozed...) before
        if record ~= '1' then  -- as format 2's HSET keeps them
          if f[9] then redis.call('HSET', key, 'worker', f[9]) end
          if f[11] then redis.call('HSET', key, 'key', f[11]) end
        end
        kept(key, id, ttype)
      end
      ended(id, unique)
    elseif outcome == 'snooze' then
      note_run(key, outcome, text, now_s, 'scheduled')
      snooze(DELAYED, key, id, now + tonumber(more(more_s)[RETRY_DELAY_MS]))
      add(counts, 'snoozed', 1)
      slot = slot and not keeps_slot(key, ttype, gid)
    elseif outcome == 'permanent' or outcome == 'unknown_type' then
      add(counts, 'failed', 1)
      note_run(key, outcome, text, now_s, 'dead')
      dead_letter(DEAD, STATS, TASK, id, outcome, text, now_s)
      ended(id, unique)
    else
      add(counts, 'failed', 1)
      local m = more(more_s)
      local failures, max_retries = redis.call('HINCRBY', key, 'failures', 1), tonumber(m[MAX_RETRIES])
      note_run(key, outcome, text, now_s, failures <= max_retries and 'retrying' or 'dead')
      if failures <= max_retries then
        redis.call('HSET', key, 'state', 'retrying', 'last_error', text)
        if progressed and progressed[id] then clear_progress(key) end
        redis.call('ZADD', DELAYED, now + tonumber(m[RETRY_DELAY_MS]), id)
        add(counts, 'retried', 1)
        slot = slot and not keeps_slot(key, ttype, gid)
      else
        dead_letter(DEAD, STATS, TASK, id, outcome, text, now_s)
        ended(id, unique)
      end
    end
    if gid and slot then group_release(G, gid, now) end
  end
end

for o = 0, #batch - 1, #SETTLE_FIELDS do  -- flat: a table a task cost cjson twice as much
  local id = batch[o + ID]
  settle_one(id, batch[o + TYPE], batch[o + OUTCOME], batch[o + TEXT], batch[o + UNIQUE], batch[o + KEY],
             batch[o + RECORD], batch[o + MORE], take(id))
end
-- The plain successes (ARGV[7]): what settle_one does for them, in fewer steps.
local n_ok = 0
for o = 0, #succeeded - 1, MORE do  -- MORE: the width of SETTLE_OK, the first four of SETTLE_FIELDS
  local id = succeeded[o + ID]
  if take(id) then
    local key = TASK .. id
    if cancels and cancel_request(CANCELS, cancels, key, id) then
      redis.call('HDEL', key, 'cancel', 'cancel_requested_at')  -- too late: it succeeded
    end
    succeed_small(key, id, succeeded[o + TYPE], succeeded[o + TEXT])
    n_ok = n_ok + 1
    if waited then ended_ids[#ended_ids + 1] = id end
  else
    settle_one(id, succeeded[o + TYPE], 'ok', succeeded[o + TEXT], '', '', 's', succeeded[o + MORE], false)
  end
end
if n_ok > 0 then
  applied = applied + n_ok
  add(counts, 'succeeded', n_ok)
end
if taken > 0 then
  local kept = {}
  for _, id in ipairs(list) do
    if held[id] then kept[#kept + 1] = id end
  end
  redis.call('DEL', PROCESSING)
  for i = 1, #kept, 1000 do  -- in slices: unpack has a stack limit
    redis.call('RPUSH', PROCESSING, unpack(kept, i, math.min(i + 999, #kept)))
  end
end
for into, l in pairs(finished) do settle_list(into, l[1], l[2], l[3]) end
-- '%d': an integer however large; a Lua number as argument may be sent in e-notation.
for field, n in pairs(sums) do
  if n ~= 0 then redis.call('HINCRBY', METRICS, field, string.format('%d', n)) end
end
for field, n in pairs(counts) do redis.call('HINCRBY', STATS, field, string.format('%d', n)) end
wake(WAITERS, WAKE, ended_ids)
return {applied, stale}
