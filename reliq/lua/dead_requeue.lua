-- Send dead-lettered tasks back to pending with a fresh retry budget.
-- KEYS[1] dead list  KEYS[2] pending list  KEYS[3] stats hash  KEYS[4] task key prefix
-- ARGV[1] 'ids' followed by task ids, or 'oldest' followed by a count
-- Returns the number requeued (ids not in the dead list are ignored).
local ids = {}
if ARGV[1] == 'oldest' then
  for _ = 1, tonumber(ARGV[2]) do
    local id = redis.call('RPOP', KEYS[1])
    if not id then break end
    ids[#ids + 1] = id
  end
else
  for i = 2, #ARGV do
    if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then ids[#ids + 1] = ARGV[i] end
  end
end
return requeue_dead(KEYS[2], KEYS[3], KEYS[4], ids, now_ms())
