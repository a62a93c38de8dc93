-- Stop waiting for a task: take a hub out of the task's mark (the wait timed out or its
-- caller went away), so the task's end pushes nothing to nobody.
-- KEYS[1] waiters hash
-- ARGV[1] task id  ARGV[2] hub
-- Returns 1 if the hub was listed, else 0.
local hubs = redis.call('HGET', KEYS[1], ARGV[1])
if not hubs then return 0 end
local kept, found = {}, 0
for hub in string.gmatch(hubs, '%S+') do
  if hub == ARGV[2] then found = 1 else kept[#kept + 1] = hub end
end
if #kept == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
elseif found == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], table.concat(kept, ' '))
end
return found
