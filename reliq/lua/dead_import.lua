-- Recreate exported dead tasks, idempotently: an id whose record exists in the queue
-- (in any state) is left alone, so importing a file twice creates nothing twice.
-- KEYS[1] DEAD     dead list
-- KEYS[2] STATS    stats hash
-- KEYS[3] TASK     task key prefix
-- ARGV[1] records  JSON array of [id, [field, value, field, value, ...]], newest first
-- Returns the ids created. They join the oldest end of the dead list in file order.
local DEAD, STATS, TASK = KEYS[1], KEYS[2], KEYS[3]
local records = cjson.decode(ARGV[1])
local created = {}
for _, item in ipairs(records) do
  local id, fields = item[1], item[2]
  local key = TASK .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('HSET', key, 'state', 'dead')  -- whatever the file said
    redis.call('RPUSH', DEAD, id)
    created[#created + 1] = id
  end
end
if #created > 0 then redis.call('HINCRBY', STATS, 'dead_imported', #created) end
return created
