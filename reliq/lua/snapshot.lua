-- One consistent look at a queue, for /stats and the dashboard.
-- KEYS[1] PENDING     pending list
-- KEYS[2] DELAYED     delayed zset
-- KEYS[3] DEAD        dead list
-- KEYS[4] WORKERS     workers zset
-- KEYS[5] STATS       stats hash
-- KEYS[6] PROCESSING  processing list prefix (+ worker id)
-- KEYS[7] TASK        task key prefix
-- KEYS[8] ARCHIVE     dead-letter archive stream
-- KEYS[9] PAUSED      paused hash
-- KEYS[10] HELD       held list prefix (+ task type)
-- KEYS[11] PRIO       prefix of the other priorities' pending lists (+ priority)
-- KEYS[12] LIMITED_DUE  zset of the types with tasks set aside for a token
-- KEYS[13] LIMITED    limited list prefix (+ task type)
-- KEYS[14] GROUPS     keys' state hash: its counts ready, aside and paused (docs/flow-control.md)
-- Returns SNAPSHOT_FIELDS (reliq/formats.py), then counter, value, counter, value, ... of
-- the stats hash: now_ms; the counts of pending (held ids included), delayed, dead,
-- workers, processing, archived and held (ids of paused types set aside); the oldest
-- pending task's queued_at and the oldest dead task's finished_at (-1 when none); pauses,
-- {field, value, held, field, value, held, ...} of the paused hash; pending_by_priority,
-- {pending of priority 9, 8, ..., 0} (held ids in none of them); limited_count, the tasks set
-- aside for a token, and keyed_count, those in keys' lists: both in pending_count too (keys'
-- markers, in the held and limited lists, are left out of it: they are no tasks).
-- A wake mark (reliq/priorities.py) in pending is no task: it is left out of the counts.
-- At most one waits, and only ids pushed to the taking end since it came can be behind it,
-- so it is looked for among the last 1,000 (past them, pending would read one too many).
--- @format SNAPSHOT_FIELDS
--- @format WHOLE_QUEUE
local PENDING, DELAYED, DEAD, WORKERS, STATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local PROCESSING, TASK, ARCHIVE, PAUSED, HELD, PRIO = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local LIMITED_DUE, LIMITED, GROUPS = KEYS[12], KEYS[13], KEYS[14]
local workers = redis.call('ZRANGE', WORKERS, 0, -1)
local processing = 0
for _, w in ipairs(workers) do
  processing = processing + redis.call('LLEN', PROCESSING .. w)
end
-- The oldest pending task is at the taking end of one of the lists.
local oldest = -1
local by_priority, ready = {}, 0
local marked = redis.call('LPOS', PENDING, WAKE_MARK, 'RANK', -1, 'MAXLEN', 1000) and 1 or 0
for p = 9, 0, -1 do
  local list = ready_list(PENDING, PRIO, tostring(p))
  local n = redis.call('LLEN', list)
  local tail = n > 0 and redis.call('LINDEX', list, -1)
  if list == PENDING then
    n = n - marked
    if tail == WAKE_MARK then tail = redis.call('LINDEX', list, -2) end
  end
  if tail then
    local at = tonumber(redis.call('HGET', TASK .. tail, 'queued_at') or -1)
    if at >= 0 and (oldest < 0 or at < oldest) then oldest = at end
  end
  by_priority[#by_priority + 1] = n
  ready = ready + n
end
local oldest_dead = -1
local dead_tail = redis.call('LINDEX', DEAD, -1)
if dead_tail then
  oldest_dead = tonumber(redis.call('HGET', TASK .. dead_tail, 'finished_at') or -1)
end
-- Held ids exist only for types in the paused hash (resume.lua deletes a field last).
local pauses, held = {}, 0
local paused = redis.call('HGETALL', PAUSED)
for i = 1, #paused, 2 do
  local n = paused[i] == WHOLE_QUEUE and 0 or redis.call('LLEN', HELD .. paused[i])
  held = held + n
  pauses[#pauses + 1] = paused[i]
  pauses[#pauses + 1] = paused[i + 1]
  pauses[#pauses + 1] = n
end
local out = {}
out[NOW_MS] = now_ms()
local limited = 0
for _, ttype in ipairs(redis.call('ZRANGE', LIMITED_DUE, 0, -1)) do
  limited = limited + redis.call('LLEN', LIMITED .. ttype)
end
local keyed, aside, paused_keys = unpack(redis.call('HMGET', GROUPS, 'ready', 'aside', 'paused'))
keyed, aside, paused_keys = tonumber(keyed or 0), tonumber(aside or 0), tonumber(paused_keys or 0)
held = held - paused_keys
out[PENDING_COUNT] = ready + held + limited - aside + keyed
out[DELAYED_COUNT] = redis.call('ZCARD', DELAYED)
out[DEAD_COUNT] = redis.call('LLEN', DEAD)
out[WORKER_COUNT] = #workers
out[PROCESSING_COUNT] = processing
out[OLDEST_QUEUED_MS] = oldest
out[OLDEST_DEAD_MS] = oldest_dead
out[ARCHIVE_COUNT] = redis.call('XLEN', ARCHIVE)
out[HELD_COUNT] = held
out[PAUSES] = pauses
out[PENDING_BY_PRIORITY] = by_priority
out[LIMITED_COUNT] = limited - aside
out[KEYED_COUNT] = keyed
for _, v in ipairs(redis.call('HGETALL', STATS)) do out[#out + 1] = v end
return out
