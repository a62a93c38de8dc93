-- Delete dead-lettered tasks and their records.
-- KEYS[1] dead list  KEYS[2] task key prefix
-- ARGV[1] 'ids' followed by task ids, or 'oldest' followed by a count
-- Returns the number deleted; with 'oldest', call again while it equals the count.
local n = 0
if ARGV[1] == 'oldest' then
  for _ = 1, tonumber(ARGV[2]) do
    local id = redis.call('RPOP', KEYS[1])
    if not id then break end
    redis.call('DEL', KEYS[2] .. id)
    n = n + 1
  end
else
  for i = 2, #ARGV do
    if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
      redis.call('DEL', KEYS[2] .. ARGV[i])
      n = n + 1
    end
  end
end
return n
