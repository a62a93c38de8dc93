#!lua flags=allow-oom
-- Recover the tasks of worker W if it has been silent for longer than the lease.
-- KEYS[1] WORKERS     workers zset
-- KEYS[2] PROCESSING  processing list of W
-- KEYS[3] PENDING     pending list
-- KEYS[4] DEAD        dead list
-- KEYS[5] STATS       stats hash
-- KEYS[6] INFO        info hash of W
-- KEYS[7] TASK        task key prefix
-- KEYS[8] WAITERS     waiters hash
-- KEYS[9] WAKE        wake-up list prefix (a quarantined task wakes its waiters)
-- KEYS[10] PRIO       prefix of the other priorities' pending lists (+ priority)
-- KEYS[11] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
-- KEYS[12] CANCELS    W's cancel-request set
-- KEYS[13] IDEM       idempotency key prefix
-- KEYS[14] UNIQUE_LOCKS  unique lock prefix (a quarantined or cancelled unique task frees its lock)
-- KEYS[15..18]        the keys of tasks (_lib.lua: G): a keyed task goes back at the head of
--                     its key's list, and the slot it held is given back (dead-lettered or
--                     cancelled too)
-- ARGV[1] worker      W
-- ARGV[2] lease_ms    lease (ms)
-- ARGV[3] limit       crash limit
-- ARGV[4] ttl_ms      TTL of a cancelled record (ms)
-- Returns {CODE_OK, recovered, quarantined, cancelled}, or {CODE_ALIVE, 0, 0, 0} when W is
-- alive after all (reliq/formats.py).
-- Every task W held gets one more crash on its record. Only a task W held alone is
-- known to be the culprit (workers run crash suspects alone): it is quarantined in the
-- dead-letter list (reason crashed) once its crashes reach the limit. Recovered tasks
-- go to the right end of pending (of their priority's list), oldest first, to run next.
-- A task whose cancel was asked for while W ran it is not requeued: it ends cancelled
-- (with no crash charged), as it would have had W stopped it. A task W was running gets
-- an entry 'crashed' in its run history (_lib.lua: note_run).
--- @format CODE
local WORKERS, PROCESSING, PENDING, DEAD, STATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local INFO, TASK, WAITERS, WAKE, PRIO, PRIORITIES = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local CANCELS, IDEM, UNIQUE_LOCKS = KEYS[12], KEYS[13], KEYS[14]
local worker, lease_ms, limit, ttl_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local G = {groups = KEYS[15], group = KEYS[16], ring = KEYS[17], key_holds = KEYS[18], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local now = now_ms()
local now_s = tostring(now)
local beat = redis.call('ZSCORE', WORKERS, worker)
if beat and tonumber(beat) > now - lease_ms then
  return {CODE_ALIVE, 0, 0, 0}
end
local ids = redis.call('LRANGE', PROCESSING, 0, -1)
local marks = 0  -- a wake mark a BLMOVE moved in is no task: W did not run it beside another
for _, id in ipairs(ids) do
  if id == WAKE_MARK then marks = marks + 1 end
end
local solo = #ids - marks == 1
local recovered, quarantined, cancelled = 0, 0, 0
local asked = redis.call('EXISTS', CANCELS) == 1
for _, id in ipairs(ids) do
  local key = TASK .. id
  local crashes, priority, tkey, ttype, state = unpack(redis.call('HMGET', key, 'crashes', 'priority', 'key', 'type',
                                                                   'state'))
  -- anything else (cancelled meanwhile, record expired) is just dropped from the list;
  -- an id BLMOVE moved but W never claimed ('pending') did not run: no crash to count
  if state == 'processing'
      and end_held_cancel(CANCELS, asked, key, id, IDEM, UNIQUE_LOCKS, now, ttl_ms, WAITERS, WAKE) then
    cancelled = cancelled + 1
    if tkey then group_release(G, gid_of(ttype, tkey), now) end
  elseif state == 'processing' or state == 'pending' then
    crashes = tonumber(crashes) or 0
    local quarantine = solo and (state == 'processing' and crashes + 1 or crashes) >= limit
    if state == 'processing' then  -- it ran: a crash, in its run history too
      crashes = redis.call('HINCRBY', key, 'crashes', 1)
      note_run(key, 'crashed', 'its worker died while running it (crash ' .. crashes .. ')', now_s,
               quarantine and 'dead' or 'pending', worker)
    end
    if quarantine then
      dead_letter(DEAD, STATS, TASK, id, 'crashed',
                  'its worker died ' .. crashes .. ' times while running it', now)
      quarantined = quarantined + 1
      unique_release(UNIQUE_LOCKS, redis.call('HGET', key, 'unique'), id)
      if redis.call('EXISTS', WAITERS) == 1 then wake(WAITERS, WAKE, {id}) end
      if tkey and state == 'processing' then group_release(G, gid_of(ttype, tkey), now) end
    else
      hand_back(G, key, id, tkey, ttype, priority, state == 'processing', now)
      recovered = recovered + 1
    end
  end
end
if recovered > 0 then redis.call('HINCRBY', STATS, 'recovered', recovered) end
drop_worker(STATS, WORKERS, worker, PROCESSING, INFO, CANCELS, cancelled)
return {CODE_OK, recovered, quarantined, cancelled}
