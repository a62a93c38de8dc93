#!lua flags=allow-oom
-- A periodic schedule's tasks are in the queue: note the newest, and free the schedule for
-- its next decision.
-- allow-oom: the tasks are in already; a decision left unmarked would hold the schedule.
-- KEYS[1] SCHEDULE  the schedule's hash
-- ARGV[1] firing    the decision's slots as schedule_fire.lua recorded them ('' = a manual
--                   trigger: no decision to clear, counted as triggered)
-- ARGV[2] task_id   the newest task enqueued
-- Returns 1 when noted, 0 when the decision was noted already or the schedule is gone.
local SCHEDULE = KEYS[1]
local firing, task_id = ARGV[1], ARGV[2]
if firing == '' then
  if redis.call('EXISTS', SCHEDULE) == 0 then return 0 end
  redis.call('HINCRBY', SCHEDULE, 'triggered', 1)
elseif redis.call('HGET', SCHEDULE, 'firing') == firing then
  redis.call('HDEL', SCHEDULE, 'firing', 'firing_def')
else
  return 0
end
redis.call('HSET', SCHEDULE, 'last_task', task_id, 'last_at', now_ms())
return 1
