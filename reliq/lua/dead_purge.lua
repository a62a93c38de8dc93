-- Delete dead-lettered tasks and their records.
-- KEYS[1] DEAD     dead list
-- KEYS[2] TASK     task key prefix
-- ARGV[1] oldest   how many to take from the oldest end, or 0: the task ids follow in ARGV[2..]
-- Returns the number deleted; with oldest, call again while it equals oldest.
local DEAD, TASK = KEYS[1], KEYS[2]
local oldest = tonumber(ARGV[1])
local n = 0
if oldest > 0 then
  for _ = 1, oldest do
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
