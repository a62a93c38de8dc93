#!lua flags=allow-oom
-- Resume a paused queue (field '*') or type, moving up to N of the type's held ids a call
-- back to the taking end of pending, in their order (oldest taken first).
-- KEYS[1] paused hash  KEYS[2] pending list  KEYS[3] held list of the type (unused for '*')
-- ARGV[1] field: '*' or the task type  ARGV[2] N (ids moved at most this call)
-- ARGV[3] '1' on the first call of a resume, '' on the calls that go on with it
-- Returns {was paused (1/0), moved, left}; left = -1 when the type was paused again meanwhile
-- (then its remaining held ids stay held).
-- While ids are left the field reads 'resuming|...': claims then take the type as usual, and
-- the field lives until the held list is empty, so a resume cut short (a crash) shows in the
-- pause state and is finished by resuming again. Its ids are pending all along.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return {0, 0, 0} end
if ARGV[1] == '*' then
  redis.call('HDEL', KEYS[1], '*')
  return {1, 0, 0}
end
if string.sub(current, 1, 7) == 'paused|' then
  if ARGV[3] ~= '1' then return {1, 0, -1} end
  redis.call('HSET', KEYS[1], ARGV[1], 'resuming|' .. string.sub(current, 8))
end
local moved = 0
for _ = 1, tonumber(ARGV[2]) do
  if not redis.call('LMOVE', KEYS[3], KEYS[2], 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
local left = redis.call('LLEN', KEYS[3])
if left == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return {1, moved, left}
