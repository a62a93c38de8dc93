#!lua flags=allow-oom
-- Add to one counter of a stats hash, also on a Redis at its maxmemory: a refusal that
-- happened because Redis was full must be counted all the same (an existing integer
-- field grows by nothing; the field is created once).
-- KEYS[1] STATS    stats hash
-- ARGV[1] counter  the counter's field
-- ARGV[2] amount
-- Returns the new value.
local STATS = KEYS[1]
local counter, amount = ARGV[1], ARGV[2]
return redis.call('HINCRBY', STATS, counter, amount)
