-- Delete dead-lettered tasks and their records.
-- KEYS[1] DEAD     dead list
-- KEYS[2] TASK     task key prefix
-- ARGV[1] by       'ids' followed by task ids, or 'oldest' followed by a count
-- Returns the number deleted; with 'oldest', call again while it equals the count.
local DEAD, TASK = KEYS[1], KEYS[2]
local by = ARGV[1]
local n = 0
if by == 'oldest' then
  for _ = 1, tonumber(ARGV[2]) do
    local id = redis.call('RPOP', DEAD)
    if not id then break end
    redis.call('DEL', TASK .. id)
    n = n + 1
  end
else
  for i = 2, #ARGV do
    if redis.call('LREM', DEAD, 1, ARGV[i]) == 1 then
      redis.call('DEL', TASK .. ARGV[i])
      n = n + 1
    end
  end
end
return n
