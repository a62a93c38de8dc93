-- Recreate exported dead tasks, idempotently: an id whose record exists in the queue
-- (in any state) is left alone, so importing a file twice creates nothing twice.
-- KEYS[1] dead list  KEYS[2] stats hash  KEYS[3] task key prefix
-- ARGV[1] JSON array of [id, [field, value, field, value, ...]], newest first
-- Returns the ids created. They join the oldest end of the dead list in file order.
local created = {}
for _, item in ipairs(cjson.decode(ARGV[1])) do
  local id, fields = item[1], item[2]
  local key = KEYS[3] .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('HSET', key, 'state', 'dead')  -- whatever the file said
    redis.call('RPUSH', KEYS[1], id)
    created[#created + 1] = id
  end
end
if #created > 0 then redis.call('HINCRBY', KEYS[2], 'dead_imported', #created) end
return created
