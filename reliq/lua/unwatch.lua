-- Stop waiting for a task: take a hub out of the task's mark (the wait timed out or its
-- caller went away), so the task's end pushes nothing to nobody.
-- KEYS[1] WAITERS  waiters hash
-- ARGV[1] id       task id
-- ARGV[2] hub
-- Returns 1 if the hub was listed, else 0.
local WAITERS = KEYS[1]
local id, hub = ARGV[1], ARGV[2]
local hubs = redis.call('HGET', WAITERS, id)
if not hubs then return 0 end
local kept, found = {}, 0
for h in string.gmatch(hubs, '%S+') do
  if h == hub then found = 1 else kept[#kept + 1] = h end
end
if #kept == 0 then
  redis.call('HDEL', WAITERS, id)
elseif found == 1 then
  redis.call('HSET', WAITERS, id, table.concat(kept, ' '))
end
return found
