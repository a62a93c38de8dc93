#!lua flags=allow-oom
-- Recover the tasks of worker W if it has been silent for longer than the lease.
-- KEYS[1] workers zset  KEYS[2] processing list of W  KEYS[3] pending list
-- KEYS[4] dead list  KEYS[5] stats hash  KEYS[6] info hash of W  KEYS[7] task key prefix
-- KEYS[8] waiters hash  KEYS[9] wake-up list prefix (a quarantined task wakes its waiters)
-- ARGV[1] W  ARGV[2] lease (ms)  ARGV[3] crash limit
-- Returns {recovered, quarantined}, or {-1, 0} when W is alive after all.
-- Every task W held gets one more crash on its record. Only a task W held alone is
-- known to be the culprit (workers run crash suspects alone): it is quarantined in the
-- dead-letter list (reason crashed) once its crashes reach the limit. Recovered tasks
-- go to the right end of pending, oldest first, to run next.
local now = now_ms()
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) > now - tonumber(ARGV[2]) then
  return {-1, 0}
end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local solo = #ids == 1
local limit = tonumber(ARGV[3])
local recovered, quarantined = 0, 0
for _, id in ipairs(ids) do
  local key = KEYS[7] .. id
  local state = redis.call('HGET', key, 'state')
  -- anything else (cancelled meanwhile, record expired) is just dropped from the list;
  -- an id BLMOVE moved but W never claimed ('pending') did not run: no crash to count
  if state == 'processing' or state == 'pending' then
    local crashes = tonumber(redis.call('HGET', key, 'crashes'))
    if state == 'processing' then crashes = redis.call('HINCRBY', key, 'crashes', 1) end
    if solo and crashes >= limit then
      dead_letter(KEYS[4], KEYS[5], KEYS[7], id, 'crashed',
                  'its worker died ' .. crashes .. ' times while running it', now)
      quarantined = quarantined + 1
      if redis.call('EXISTS', KEYS[8]) == 1 then wake(KEYS[8], KEYS[9], {id}) end
    else
      redis.call('HSET', key, 'state', 'pending', 'queued_at', now)
      redis.call('RPUSH', KEYS[3], id)
      recovered = recovered + 1
    end
  end
end
if recovered > 0 then redis.call('HINCRBY', KEYS[5], 'recovered', recovered) end
redis.call('DEL', KEYS[2], KEYS[6])
redis.call('ZREM', KEYS[1], ARGV[1])
return {recovered, quarantined}
