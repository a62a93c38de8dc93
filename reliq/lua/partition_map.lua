-- Write a queue's partition map, only over the map it was decided from (reliq/partitions.py):
-- two roles creating it at once, or two `reliq partitions set` racing, cannot both win.
-- KEYS[1] MAP       the partition map (STRING, JSON)
-- ARGV[1] expected  the map the caller read ("" = none)
-- ARGV[2] new       the map to write ("" = only read it: the blocking client's way, on its own connections)
-- Returns {1, new} when written, {0, current} when the map was not the expected one (or only read).
local MAP = KEYS[1]
local expected, new = ARGV[1], ARGV[2]
local current = redis.call('GET', MAP) or ''
if new == '' or current ~= expected then
    return {0, current}
end
redis.call('SET', MAP, new)
return {1, new}
