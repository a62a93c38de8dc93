#!lua flags=allow-oom
-- Claim up to N ready tasks for worker W: move each id from pending into W's own
-- processing list, mark it processing, and return its body, in one round trip.
-- KEYS[1] PENDING     pending list
-- KEYS[2] PROCESSING  processing list of W
-- KEYS[3] TASK        task key prefix
-- KEYS[4] WORKERS     workers zset: W is put back in it if missing (reaped, or already
--                     released), so that whatever it claims stays where a reaper will look
--                     once W goes silent
-- KEYS[5] PAUSED      paused hash (reliq/pausing.py)
-- KEYS[6] HELD        held list prefix (+ task type)
-- ARGV[1] max         N, the most tasks to claim
-- ARGV[2] worker      W, the worker's id
-- ARGV[3] moved_id    an id already in PROCESSING ('' = none): moved there by BLMOVE, or
--                     found there unknown to W after a lost reply (then it may be marked
--                     processing by W already); ignored when it is no longer there: a reaper
--                     took W for dead and requeued it since, and claiming it here would
--                     leave it claimed in no list, i.e. lost
-- ARGV[4] elsewhere   how many tasks W holds in its lists of other queues
-- Returns {code, now_ms, id, <fields>, id, <fields>, ...}, <fields> being CLAIM_FIELDS
-- and code CODE_OK, or as follows (both in reliq/formats.py).
-- CODE_PAUSED when the whole queue is paused: nothing is claimed, and moved_id, if
-- still pending, goes back to the taking end of pending, uncounted (a BLMOVE moved it).
-- Pending ids of a paused type met on the way (moved_id included) are set aside into the
-- type's held list, still pending; resume.lua puts them back. Nothing paused costs one
-- EXISTS a call.
-- CODE_SUSPECT_WAITS when the next task is a crash suspect (it has taken a worker down before)
-- and W holds other tasks, here or in other queues: suspects run alone, so that a crash
-- is blamed on the right task.
-- Ids whose record is gone or no longer pending (cancelled, finished by a late ack)
-- are dropped on the way.
-- Numbers go to redis.call as strings made once (now) or once a value (attempts): Lua
-- turns a number into a string with sprintf, which costs as much as a small command.
--- @format CLAIM_FIELDS
--- @format CODE
local PENDING, PROCESSING, TASK, WORKERS, PAUSED, HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local max, worker, moved_id, elsewhere = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = tostring(now_ms())
local out = {CODE_OK, now}
local taken = 0
local next_attempt = {}  -- attempts so far -> the next, as strings

local function claim(id, f)
  local attempts = next_attempt[f[ATTEMPTS]]
  if not attempts then
    attempts = tostring(tonumber(f[ATTEMPTS]) + 1)
    next_attempt[f[ATTEMPTS]] = attempts
  end
  f[ATTEMPTS] = attempts
  redis.call('HSET', TASK .. id, 'state', 'processing', 'started_at', now,
             'attempts', attempts, 'worker', worker)
  out[#out + 1] = id
  for j = 1, #CLAIM_FIELDS do out[#out + 1] = f[j] end
  taken = taken + 1
end

local paused_types = false  -- type -> true for each paused type, when any is
if redis.call('EXISTS', PAUSED) == 1 then
  local pauses = redis.call('HGETALL', PAUSED)
  for i = 1, #pauses, 2 do
    if string.sub(pauses[i + 1], 1, 1) == 'p' then  -- 'paused|...'; 'resuming|...' claims as usual
      if pauses[i] == '*' then
        local id = moved_id
        if id ~= '' and redis.call('LPOS', PROCESSING, id)
            and redis.call('HGET', TASK .. id, 'state') == 'pending' then
          redis.call('LREM', PROCESSING, 1, id)
          redis.call('RPUSH', PENDING, id)
        end
        out[1] = CODE_PAUSED
        return out
      end
      paused_types = paused_types or {}
      paused_types[pauses[i]] = true
    end
  end
end

local function held(state, f)
  return paused_types and state == 'pending' and paused_types[f[TYPE]]
end

local function fields(id)
  local f = redis.call('HMGET', TASK .. id, 'state', unpack(CLAIM_FIELDS))
  local state = table.remove(f, 1)
  return state, f
end

if moved_id ~= '' and redis.call('LPOS', PROCESSING, moved_id) then
  local id = moved_id
  local state, f = fields(id)
  local ours = state == 'processing' and redis.call('HGET', TASK .. id, 'worker') == worker
  if state ~= 'pending' and not ours then
    redis.call('LREM', PROCESSING, 1, id)
  elseif held(state, f) then
    redis.call('LREM', PROCESSING, 1, id)
    redis.call('LPUSH', HELD .. f[TYPE], id)
  elseif tonumber(f[CRASHES]) > 0 and (redis.call('LLEN', PROCESSING) > 1 or elsewhere > 0) then
    redis.call('LREM', PROCESSING, 1, id)
    redis.call('RPUSH', PENDING, id)
    out[1] = CODE_SUSPECT_WAITS
    return out
  else
    claim(id, f)
    if tonumber(f[CRASHES]) > 0 then return out end
  end
end

-- The next ids are read with one LRANGE, taken off the tail with one LTRIM and put at the
-- head of W's list with one LPUSH: the lists end as after one LMOVE an id, in three calls.
local skipped = 0
while taken < max and skipped < 1000 do
  local window = redis.call('LRANGE', PENDING, -(max - taken), -1)
  local used, moved, stop = 0, {}, false
  for i = #window, 1, -1 do
    local id = window[i]
    local state, f = fields(id)
    if paused_types and state == 'pending' and paused_types[f[TYPE]] then  -- inline: once a task
      state = 'held'  -- taken off pending below like a skipped id, into its type's held list
      redis.call('LPUSH', HELD .. f[TYPE], id)
    elseif state == 'pending' and tonumber(f[CRASHES]) > 0 then
      if taken == 0 and elsewhere == 0 and redis.call('LLEN', PROCESSING) == 0 then
        used = used + 1
        moved[#moved + 1] = id
        claim(id, f)
      elseif taken == 0 then
        out[1] = CODE_SUSPECT_WAITS
      end
      stop = true
      break
    end
    used = used + 1
    if state == 'pending' then
      moved[#moved + 1] = id
      claim(id, f)
    else
      skipped = skipped + 1
    end
  end
  if used > 0 then redis.call('LTRIM', PENDING, 0, -(used + 1)) end
  for i = 1, #moved, 1000 do  -- in slices: unpack has a stack limit
    redis.call('LPUSH', PROCESSING, unpack(moved, i, math.min(i + 999, #moved)))
  end
  if stop or #window == 0 then break end
end
if taken > 0 then redis.call('ZADD', WORKERS, 'NX', now, worker) end
return out
