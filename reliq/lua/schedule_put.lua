#!lua flags=allow-oom
-- Declare a periodic schedule, or define it again (reliq/schedules.py).
-- allow-oom: a worker started on a full Redis must get past declaring its schedules to drain
-- the queue; a definition is one small hash.
-- KEYS[1] SCHEDULES  set of the queue's schedule names
-- KEYS[2] SCHEDULE   the schedule's hash
-- ARGV[1] name       the schedule's name
-- ARGV[2] def        its definition, JSON
-- ARGV[3] version    the definition's digest
-- ARGV[4] timing     its timing alone ('every 30', 'cron 0 9 * * * Europe/Paris')
-- ARGV[5] source     SOURCE_API (defined at run time: always written) or SOURCE_CODE (declared
--                    by a worker's --app modules: written unless a run-time definition holds
--                    the name); reliq/formats.py: ScheduleSource
-- Returns {outcome, now_ms} (reliq/formats.py: Put): PUT_CREATED, PUT_UPDATED, PUT_UNCHANGED,
-- or PUT_KEPT (code met a run-time definition that differs from it, and left it as it is).
-- A new schedule's cursor starts at now: its first slot is the first after its creation. A
-- definition whose timing changed moves the cursor to now (when later), so no slot of the
-- old timing runs late under the new one; other changes keep the cursor. A pause stays.
--- @format PUT
--- @format SOURCE
local SCHEDULES, SCHEDULE = KEYS[1], KEYS[2]
local name, def, version, timing, source = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local was_version, was_timing, was_source, upto = unpack(redis.call('HMGET', SCHEDULE, 'version', 'when', 'source',
                                                                   'upto'))
if not was_version then
  redis.call('HSET', SCHEDULE, 'def', def, 'version', version, 'when', timing, 'source', source, 'upto', now,
             'created_at', now, 'updated_at', now)
  redis.call('SADD', SCHEDULES, name)
  return {PUT_CREATED, now}
end
if source == SOURCE_CODE and was_source == SOURCE_API then
  return {was_version == version and PUT_UNCHANGED or PUT_KEPT, now}
end
if was_version == version and was_source == source then return {PUT_UNCHANGED, now} end
redis.call('HSET', SCHEDULE, 'def', def, 'version', version, 'when', timing, 'source', source, 'updated_at', now)
if was_timing ~= timing and tonumber(upto) < now then
  redis.call('HSET', SCHEDULE, 'upto', now)
end
return {PUT_UPDATED, now}
