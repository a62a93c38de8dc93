#!lua flags=allow-oom
-- The record format a queue's producers write (reliq/keys.py: format; reliq/formats.py:
-- RecordFormat), decided once by the first role of a version that knows formats: format 2
-- for a new queue, format 1 for a queue in use already (workers of a version before
-- format 2 may serve it, and they read format 1 alone), until `reliq records upgrade`.
-- KEYS[1] FORMAT   the format
-- KEYS[2..6]       keys that exist only on a queue in use: stats, workers, pending, delayed, dead
-- KEYS[7] INFO     the workers' info hash prefix (+ worker id)
-- ARGV[1] set      '' (decide, or read what was decided), or a format to set (the upgrade:
--                  refused, writing nothing, while a registered worker (in WORKERS) does not
--                  say in its info that it reads that format: checked here, so that no worker
--                  can register between the check and the write)
-- ARGV[2] new_as   the format a new queue takes ('' = 2): a partition after the first takes
--                  the first's, so that a queue of format 1 grown stays readable by all
-- ARGV[3] speaks   the info field in which a worker says the newest format it reads
-- Returns {the format, then the workers an upgrade was refused for, if any}. allow-oom: a
-- Redis at its maxmemory refuses the queue's enqueues (with RedisFull, counted), not a
-- role's first contact with the queue; it writes one small key once.
--- @format RECORD
local FORMAT, WORKERS, INFO = KEYS[1], KEYS[3], KEYS[7]
local decided = redis.call('GET', FORMAT)
if ARGV[1] ~= '' then
  local older = {tonumber(decided) or RECORD_FIELDS}
  for _, w in ipairs(redis.call('ZRANGE', WORKERS, 0, -1)) do
    if (tonumber(redis.call('HGET', INFO .. w, ARGV[3])) or RECORD_FIELDS) < tonumber(ARGV[1]) then
      older[#older + 1] = w
    end
  end
  if #older > 1 then return older end
  redis.call('SET', FORMAT, ARGV[1])
  return {tonumber(ARGV[1])}
end
if decided then return {tonumber(decided)} end
local format = redis.call('EXISTS', unpack(KEYS, 2, 6)) > 0 and RECORD_FIELDS or (tonumber(ARGV[2]) or RECORD_BODY)
redis.call('SET', FORMAT, format)
return {format}
