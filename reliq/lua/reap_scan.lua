#!lua flags=allow-oom
-- Start a reaper's round: note that Redis is serving, take the round's lock, list the
-- workers silent past their lease.
-- KEYS[1] WORKERS   workers zset
-- KEYS[2] LOCK      reaper lock
-- KEYS[3] CLOCK     reaper clock hash (seen, grace_until)
-- ARGV[1] owner     who takes the lock
-- ARGV[2] lock_ms   how long the lock is held (ms)
-- ARGV[3] lease_ms  lease (ms): a worker silent longer is taken for dead
-- ARGV[4] gap_ms    no round for longer than this (ms) means an outage
-- ARGV[5] grace_ms  how long no worker is taken for dead after an outage (ms)
-- Returns the ids of silent workers; {} when another reaper holds the round, or while
-- the grace after an outage lasts.
-- Why the clock: while Redis is stalled or down no heartbeat lands, so when it comes back
-- every worker looks silent, and a reaper that gets in before the others' heartbeats
-- (still in their reconnect backoff) would requeue the tasks of live workers. Every
-- reaper of the fleet notes each round it tries here; when no round reached Redis for
-- longer than the gap, nobody could have beaten either, so no worker is taken for dead
-- until the grace (one lease and the reconnect backoff) has passed.
local WORKERS, LOCK, CLOCK = KEYS[1], KEYS[2], KEYS[3]
local owner, lock_ms, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local gap_ms, grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local seen = tonumber(redis.call('HGET', CLOCK, 'seen'))
local grace_until = tonumber(redis.call('HGET', CLOCK, 'grace_until')) or 0
if seen and now - seen > gap_ms then
  grace_until = now + grace_ms
  redis.call('HSET', CLOCK, 'grace_until', grace_until)
end
redis.call('HSET', CLOCK, 'seen', now)
if now < grace_until then return {} end
if not redis.call('SET', LOCK, owner, 'NX', 'PX', lock_ms) then return {} end
return redis.call('ZRANGEBYSCORE', WORKERS, '-inf', now - lease_ms)
