#!lua flags=allow-oom
-- The record format a queue's producers write (reliq/keys.py: format; reliq/formats.py:
-- RecordFormat), decided once by the first role of a version that knows formats: format 2
-- for a new queue, format 1 for a queue in use already (workers of a version before
-- format 2 may serve it, and they read format 1 alone), until `reliq records upgrade`.
-- KEYS[1] FORMAT   the format
-- KEYS[2..]        keys that exist only on a queue in use: stats, workers, pending, delayed, dead
-- ARGV[1] set      '' (decide, or read what was decided), or a format to set (the upgrade)
-- ARGV[2] new_as   the format a new queue takes ('' = 2): a partition after the first takes
--                  the first's, so that a queue of format 1 grown stays readable by all
-- Returns the format. allow-oom: a Redis at its maxmemory refuses the queue's enqueues (with
-- RedisFull, counted), not a role's first contact with the queue; it writes one small key once.
--- @format RECORD
local FORMAT = KEYS[1]
if ARGV[1] ~= '' then
  redis.call('SET', FORMAT, ARGV[1])
  return tonumber(ARGV[1])
end
local decided = redis.call('GET', FORMAT)
if decided then return tonumber(decided) end
local format = redis.call('EXISTS', unpack(KEYS, 2)) > 0 and RECORD_FIELDS or (tonumber(ARGV[2]) or RECORD_BODY)
redis.call('SET', FORMAT, format)
return format
