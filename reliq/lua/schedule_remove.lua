#!lua flags=allow-oom
-- Remove a periodic schedule: no slot of it is decided any more (tasks already enqueued stay).
-- allow-oom: removing one frees memory; an operator may do it on a full Redis.
-- KEYS[1] SCHEDULES  set of the queue's schedule names
-- KEYS[2] SCHEDULE   the schedule's hash
-- ARGV[1] name
-- Returns 1 when it was removed, 0 when there was no such schedule.
local SCHEDULES, SCHEDULE = KEYS[1], KEYS[2]
local gone = redis.call('SREM', SCHEDULES, ARGV[1])
return math.max(gone, redis.call('DEL', SCHEDULE))
