-- The queue's periodic schedules as stored, each with its last task's state, and the Redis clock.
-- KEYS[1] SCHEDULES  set of the queue's schedule names
-- KEYS[2] SCHEDULE   prefix of the schedules' hashes (the name is appended)
-- KEYS[3] TASK       task key prefix
-- ARGV[1] one        one schedule's name ('' = all of them)
-- Returns {now_ms, name, {field, value, ...}, last task's state ('' = none, or its record is
-- gone), name, ...}, by name.
local SCHEDULES, SCHEDULE, TASK = KEYS[1], KEYS[2], KEYS[3]
local one = ARGV[1]
local names
if one == '' then
  names = redis.call('SMEMBERS', SCHEDULES)
  table.sort(names)
else
  names = {one}
end
local out = {now_ms()}
for _, name in ipairs(names) do
  local fields = redis.call('HGETALL', SCHEDULE .. name)
  if #fields > 0 then
    local state = ''
    local last = redis.call('HGET', SCHEDULE .. name, 'last_task')
    if last then state = redis.call('HGET', TASK .. last, 'state') or '' end
    out[#out + 1] = name
    out[#out + 1] = fields
    out[#out + 1] = state
  end
end
return out
