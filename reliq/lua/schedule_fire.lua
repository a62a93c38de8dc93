-- Record one round's decision for a periodic schedule: which slots are enqueued, how many
-- skipped, and the new cursor. Only one decision can follow a cursor: this is what makes a
-- slot run once whatever the number of workers, and only once due by the Redis clock.
-- KEYS[1] SCHEDULE  the schedule's hash
-- KEYS[2] STATS     the queue's stats hash
-- ARGV[1] version   the definition the decision was made from
-- ARGV[2] upto      the cursor it was made from (ms, as read)
-- ARGV[3] new_upto  the new cursor: every slot up to it is decided
-- ARGV[4] skipped   slots skipped (missed, by the schedule's policy)
-- ARGV[5] slots     the slots to enqueue, a JSON array of ms, oldest first ('[]' = none)
-- ARGV[6] newest    the newest of them ('' = none)
-- Returns {outcome, now_ms} (reliq/formats.py: Fire): FIRE_OK when recorded (the slots wait
-- in the hash's 'firing' until their tasks are in, schedule_enqueued.lua); or, with nothing
-- written: FIRE_GONE (no such schedule), FIRE_PAUSED, FIRE_CHANGED (defined again since the
-- read), FIRE_BUSY (an earlier decision's tasks are not all in yet), FIRE_RACED (another
-- worker decided from this cursor first), FIRE_EARLY (a slot or the new cursor lies beyond
-- the Redis clock, or at or before the cursor).
--- @format FIRE
local SCHEDULE, STATS = KEYS[1], KEYS[2]
local version, upto, new_upto_s, skipped = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local new_upto = tonumber(new_upto_s)
local slots_json, newest = ARGV[5], ARGV[6]
local now = now_ms()
local cur_version, cur_upto, paused, firing, def = unpack(redis.call('HMGET', SCHEDULE, 'version', 'upto', 'paused',
                                                                     'firing', 'def'))
if not cur_version then return {FIRE_GONE, now} end
if paused then return {FIRE_PAUSED, now} end
if cur_version ~= version then return {FIRE_CHANGED, now} end
if firing then return {FIRE_BUSY, now} end
if cur_upto ~= upto then return {FIRE_RACED, now} end
local from = tonumber(upto)
local slots = cjson.decode(slots_json)
if new_upto > now or new_upto <= from then return {FIRE_EARLY, now} end
for _, slot in ipairs(slots) do
  if slot > new_upto or slot <= from then return {FIRE_EARLY, now} end
end
redis.call('HSET', SCHEDULE, 'upto', new_upto_s)  -- as sent: no number formatted
if #slots > 0 then
  redis.call('HSET', SCHEDULE, 'firing', slots_json, 'firing_def', def, 'last_slot', newest)
  redis.call('HINCRBY', SCHEDULE, 'enqueued', #slots)
  redis.call('HINCRBY', STATS, 'schedule_enqueued', #slots)
end
if skipped > 0 then
  redis.call('HINCRBY', SCHEDULE, 'skipped', skipped)
  redis.call('HINCRBY', STATS, 'schedule_skipped', skipped)
end
return {FIRE_OK, now}
