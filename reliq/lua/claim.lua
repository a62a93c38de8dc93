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
-- KEYS[7] PRIO        prefix of the other priorities' pending lists (+ priority)
-- KEYS[8] PRIORITIES  flag: a list of another priority may hold ids (set as one is created)
-- ARGV[1] max         N, the most tasks to claim
-- ARGV[2] worker      W, the worker's id
-- ARGV[3] moved_id    an id already in PROCESSING ('' = none): moved there by BLMOVE, or
--                     found there unknown to W after a lost reply (then it may be marked
--                     processing by W already); ignored when it is no longer there: a reaper
--                     took W for dead and requeued it since, and claiming it here would
--                     leave it claimed in no list, i.e. lost
-- ARGV[4] elsewhere   how many tasks W holds in its lists of other queues
-- ARGV[5] step        what one priority step is worth against waiting, in ms (the aging:
--                     reliq/priorities.py)
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
-- are dropped on the way, and so is a wake mark (reliq/priorities.py).
-- Priorities: with none in use only pending exists, and the EXISTS that looks for pauses
-- tells (the flag PRIORITIES); else the lists are merged by effective time (see
-- take_by_priority below).
-- Numbers go to redis.call as strings made once (now) or once a value (attempts): Lua
-- turns a number into a string with sprintf, which costs as much as a small command.
--- @format CLAIM_FIELDS
--- @format CODE
local PENDING, PROCESSING, TASK, WORKERS, PAUSED, HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIO, PRIORITIES = KEYS[7], KEYS[8]
local max, worker, moved_id, elsewhere = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local step = tonumber(ARGV[5])
if moved_id == WAKE_MARK then  -- a BLMOVE woke us for a task of another priority
  redis.call('LREM', PROCESSING, 1, WAKE_MARK)
  moved_id = ''
end
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

-- One look for the optional features, whose keys exist only while in use: pauses, priorities.
local optional = redis.call('EXISTS', PAUSED, PRIORITIES)
local any_paused = optional > 0 and redis.call('EXISTS', PAUSED) == 1
local prioritised = optional == 2 or (optional == 1 and not any_paused)
local paused_types = false  -- type -> true for each paused type, when any is
if any_paused then
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
    push_ready(PENDING, PRIO, PRIORITIES, id, redis.call('HGET', TASK .. id, 'priority'), 'RPUSH')
    out[1] = CODE_SUSPECT_WAITS
    return out
  else
    claim(id, f)
    if tonumber(f[CRASHES]) > 0 then return out end
  end
end

-- Priorities (reliq/priorities.py): the lists are merged by effective time,
--   queued_at - (p - 5) * step,
-- smallest first: each list is FIFO, so its taking end has its smallest, and the claim
-- takes from the list whose next id comes first until the next id of another list does.
-- The head of each list is compared by two fields (state, queued_at) read once a call;
-- the id at which a turn stops for another list is kept with its fields, so the next turn
-- on that list does not read it again. An id that is no longer pending (a wake mark, a
-- cancelled task) counts as first: it is dropped at once.
local function effective(state, f, p)
  local at = tonumber(f[QUEUED_AT])
  if state ~= 'pending' or not at then return -math.huge end
  return at - (p - 5) * step
end

-- Take ids from ``list`` (pending, or the list of priority ``p``) into W's list. With a
-- ``bound``, stop at the first pending id whose effective time is past it: the head of
-- another list comes first. ``head`` is {id, state, fields} of the list's next id when
-- already read. Returns true when the claim is over (full, a suspect met, or enough
-- dropped ids this call), else false and the list's next id as {id, state, fields,
-- effective time} (nil when the list ran out).
-- The next ids are read with one LRANGE and taken off the tail with one LTRIM a window,
-- and put at the head of W's list with one LPUSH at the end: the lists end as after one
-- LMOVE an id.
local skipped = 0
local moved = {}  -- the ids claimed, in order
local function take_from(list, p, bound, head)
  while taken < max and skipped < 1000 do
    local window = redis.call('LRANGE', list, -(max - taken), -1)
    local used, stop, next_head = 0, false, nil
    for i = #window, 1, -1 do
      local id = window[i]
      local state, f
      if head and head[1] == id and head[3] then
        state, f = head[2], head[3]
      else
        state, f = fields(id)
      end
      head = nil
      if paused_types and state == 'pending' and paused_types[f[TYPE]] then  -- inline: once a task
        state = 'held'  -- taken off the list below like a skipped id, into its type's held list
        redis.call('LPUSH', HELD .. f[TYPE], id)
      elseif bound and state == 'pending' and effective(state, f, p) > bound then
        next_head = {id, state, f, effective(state, f, p)}
        break
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
    if used > 0 then redis.call('LTRIM', list, 0, -(used + 1)) end
    if stop then return true end
    if next_head or #window == 0 then return false, next_head end
  end
  return true
end

-- The lists of every priority, merged (see effective). With none but pending holding
-- ids, the flag goes: the next claims take pending alone until a list is created again.
local function take_by_priority()
  local lists = {}  -- {key, priority, its next id as take_from returns it}, highest priority first
  local others = false
  for p = 9, 0, -1 do
    local key = ready_list(PENDING, PRIO, tostring(p))
    local id = redis.call('LINDEX', key, -1)
    if id then
      local queued_at, state = unpack(redis.call('HMGET', TASK .. id, 'queued_at', 'state'))
      lists[#lists + 1] = {key, p, {id, nil, nil, effective(state, {[QUEUED_AT] = queued_at}, p)}}
      others = others or key ~= PENDING
    end
  end
  if not others then
    redis.call('DEL', PRIORITIES)
    take_from(PENDING, 5, nil, nil)
    return
  end
  while true do
    local best, second = nil, nil
    for _, l in ipairs(lists) do
      if l[3] then
        if not best or l[3][4] < best[3][4] then
          second, best = best, l
        elseif not second or l[3][4] < second[3][4] then
          second = l
        end
      end
    end
    if not best then return end
    local over, next_head = take_from(best[1], best[2], second and second[3][4], best[3])
    if over then return end
    best[3] = next_head
  end
end

if prioritised then take_by_priority() else take_from(PENDING, 5, nil, nil) end
for i = 1, #moved, 1000 do  -- in slices: unpack has a stack limit
  redis.call('LPUSH', PROCESSING, unpack(moved, i, math.min(i + 999, #moved)))
end
if taken > 0 then redis.call('ZADD', WORKERS, 'NX', now, worker) end
return out
