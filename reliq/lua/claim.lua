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
-- KEYS[9] LIMITS      limits hash (reliq/lua/limit.lua): type -> LIMIT_FIELDS joined by SEP
-- KEYS[10] TAT        tat hash: type -> theoretical arrival time of its next task (GCRA, ms)
-- KEYS[11] LIMITED    limited list prefix (+ task type): set aside until a token
-- KEYS[12] LIMITED_DUE  zset type -> when its set-aside tasks are due (ms)
-- KEYS[13..16]        the keys of tasks (_lib.lua: G): groups hash, key list prefix, ring of
--                     keys to serve, key holds (zset gid -> hold end, ms)
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
-- Returns {code, now_ms, wait_ms, <task>, <task>, ...}, each <task> one string (CLAIMED:
-- its id and CLAIM_FIELDS) and code CODE_OK, or as follows (both in reliq/formats.py). wait_ms > 0 when
-- W could take more and tasks set aside (a rate limit's, a hold's) are due in that many ms:
-- W need not ask again before.
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
-- Flow control (docs/flow-control.md): with nothing paused, prioritised, limited or keyed,
-- none of PAUSED, PRIORITIES, LIMITS, LIMITED_DUE, the ring and the key holds exists, and a
-- call pays one EXISTS for all of them. Else it takes, in this order: set-aside tasks whose
-- token is due (LIMITED), then half of what is left from the ring of keys, then the ready
-- lists, then the ring again. A pending task of a type with no token (or with tasks set
-- aside before it) is set aside into LIMITED, once; a key's visit takes its head task and
-- puts the key back at the ring's far end while it has tasks and a free slot.
-- Numbers go to redis.call as strings made once (now) or once a value (attempts): Lua
-- turns a number into a string with sprintf, which costs as much as a small command.
--- @format CLAIM_FIELDS
--- @format OPTS_FIELDS
--- @format SEP
--- @format RECORD
--- @format CODE
--- @format LIMIT_PATTERN
--- @format PAUSED_MARK
--- @format WHOLE_QUEUE
local PENDING, PROCESSING, TASK, WORKERS, PAUSED, HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIO, PRIORITIES = KEYS[7], KEYS[8]
local LIMITS, TAT, LIMITED, LIMITED_DUE = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local G = {groups = KEYS[13], group = KEYS[14], ring = KEYS[15], key_holds = KEYS[16], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local max, worker, moved_id, elsewhere = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local step = tonumber(ARGV[5])
if moved_id == WAKE_MARK then  -- a BLMOVE woke us for a task of another priority
  redis.call('LREM', PROCESSING, 1, WAKE_MARK)
  moved_id = ''
end
local clock = now_ms()
local now = tostring(clock)
local out = {CODE_OK, now, 0}
local taken = 0
local WIDTH = #CLAIM_FIELDS
local FORMAT_AT = WIDTH + 1  -- in f past CLAIM_FIELDS: RECORD_FIELDS for a record of format 1
local next_attempt = {}  -- attempts so far -> the next, as strings
local type_len = {}  -- type -> its length and SEP, as the reply spells it (reliq/formats.py: CLAIMED)
local EMPTY = '0' .. SEP  -- a key of length 0: none
local BLANK = SEP .. SEP  -- failures, crashes and record all ''
local moved = {}  -- the ids claimed, in order: pushed onto W's list at the end
local counts = {ready = 0, aside = 0, paused = 0}  -- changes of the keys' counts, written once
-- A rate without a burst lets this many ms of it start at once (reliq/limits.py: DEFAULT_TOLERANCE_MS).
local DEFAULT_TOLERANCE_MS = 100
-- And, while tasks of it wait set aside, tokens up to this many ms late are not lost (token()).
local CATCHUP_MS = 1000

-- f: the task's fields as fields() read them; its key, set by serve_key, goes in the reply too.
local n = #out  -- out's length, kept here: #out a value costs a search of the table
local function claim(id, f)
  local before = f[ATTEMPTS] or '0'  -- absent until a first claim (reliq/formats.py: RecordFormat)
  local attempts = next_attempt[before]
  if not attempts then
    attempts = tostring(tonumber(before) + 1)
    next_attempt[before] = attempts
  end
  redis.call('HSET', TASK .. id, 'state', 'processing', 'started_at', now,
             'attempts', attempts, 'worker', worker)
  local ttype, tkey = f[TYPE], f[KEY]
  local tl = type_len[ttype]
  if not tl then
    tl = #ttype .. SEP
    type_len[ttype] = tl
  end
  local rare = BLANK  -- failures, crashes, record: none, mostly
  if f[FAILURES] or f[CRASHES] or f[FORMAT_AT] then
    rare = (f[FAILURES] or '') .. SEP .. (f[CRASHES] or '') .. SEP .. (f[FORMAT_AT] or '')
  end
  n = n + 1
  out[n] = id .. SEP .. attempts .. SEP .. (f[QUEUED_AT] or '') .. SEP .. rare .. SEP .. tl .. ttype ..
           (tkey and #tkey .. SEP .. tkey or EMPTY) .. f[BODY]
  taken = taken + 1
end

-- One look for the optional features, whose keys exist only while in use: pauses,
-- priorities, limits, set-aside tasks, keys.
local optional = redis.call('EXISTS', PAUSED, PRIORITIES, LIMITS, LIMITED_DUE, G.ring, G.key_holds)
local any_paused = optional > 0 and redis.call('EXISTS', PAUSED) == 1
local prioritised = optional > (any_paused and 1 or 0) and redis.call('EXISTS', PRIORITIES) == 1
local flowing = optional > (any_paused and 1 or 0) + (prioritised and 1 or 0)
local paused_types = false  -- type -> true for each paused type, when any is
if any_paused then
  local pauses = redis.call('HGETALL', PAUSED)
  for i = 1, #pauses, 2 do
    if string.sub(pauses[i + 1], 1, #PAUSED_MARK) == PAUSED_MARK then  -- 'resuming|...' claims as usual
      if pauses[i] == WHOLE_QUEUE then
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

-- What is read of a task, in one HMGET: CLAIM_FIELDS up to STATE (the key is not: an id in
-- a ready list or a limited list has none, keyed ids wait in their keys' lists and
-- serve_key knows theirs, and a field a record lacks costs the HMGET a scan); failures and
-- crashes only for a task that ran before (attempts > 0): a task never claimed has neither
-- (every failure and crash follows a claim that counted an attempt), so a first run reads
-- 5 fields, not 7 (~3,600 instructions, callgrind).
local READ = {unpack(CLAIM_FIELDS, 1, STATE)}
-- Whether a task has crashed a worker before (a crash suspect): crashes is absent until the
-- first crash.
local function crashed(f)
  return f[CRASHES] and f[CRASHES] ~= '0'
end

-- A record of format 1 (reliq/formats.py: RecordFormat; payload, opts and max_retries as
-- fields, or, older still, no opts but its four fields) is claimed as it is: workers of the
-- version before may serve its queue, so it keeps its format; the reply carries the body
-- it stands for, and says its format, so that its settle knows.
local function body_of(key)
  local old = redis.call('HMGET', key, 'payload', 'opts', unpack(OPTS_FIELDS))
  local opts = old[2] or ((old[3] or '0') .. SEP .. (old[4] or '') .. SEP .. (old[5] or '') .. SEP .. (old[6] or ''))
  return make_body(opts, old[1] or 'null')
end

local function fields(id)
  local key = TASK .. id
  local f = redis.call('HMGET', key, unpack(READ))
  local ran = f[ATTEMPTS]
  if ran and ran ~= '0' then
    local more = redis.call('HMGET', key, 'failures', 'crashes')
    f[FAILURES], f[CRASHES] = more[1], more[2]
  end
  local state = f[STATE]
  if not f[BODY] and (state == 'pending' or state == 'processing') then
    f[BODY] = body_of(key)
    f[FORMAT_AT] = RECORD_FIELDS
  end
  return state, f
end

-- Whether a crash suspect may be claimed by this call: only as W's one task.
local function alone()
  return taken == 0 and elsewhere == 0 and redis.call('LLEN', PROCESSING) == 0
end

local limits = {}  -- type -> {kc = key concurrency (0: none), interval, tolerance (ms; rated types)}
local tat, tat_changed = {}, false  -- type -> theoretical arrival time (ms), of the rated types
local due = {}  -- type -> when its set-aside tasks are due (ms), for the types with some

if flowing then
  local raw, rated = redis.call('HGETALL', LIMITS), {}
  for i = 1, #raw, 2 do
    local c, p, b, kc = string.match(raw[i + 1], LIMIT_PATTERN)  -- the first four of LIMIT_FIELDS
    local l = {kc = tonumber(kc)}
    if tonumber(c) > 0 then
      l.interval = tonumber(p) / tonumber(c)
      l.tolerance = b == '0' and DEFAULT_TOLERANCE_MS or (tonumber(b) - 1) * l.interval
      l.catchup = b == '0' and CATCHUP_MS or 0
      rated[#rated + 1] = raw[i]
    end
    limits[raw[i]] = l
  end
  if #rated > 0 then
    local t = redis.call('HMGET', TAT, unpack(rated))
    for i = 1, #rated do tat[rated[i]] = tonumber(t[i]) or 0 end
  end
  raw = redis.call('ZRANGE', LIMITED_DUE, 0, -1, 'WITHSCORES')
  for i = 1, #raw, 2 do due[raw[i]] = tonumber(raw[i + 1]) end
end

-- GCRA: the type's TAT after one more task now, or false when its next token is not due
-- yet; true for a type without a rate.
-- since: the type has tasks set aside, due since then, so each token since was wanted: one a
-- late claim (a worker that woke late on a busy host) did not take is still there, up to
-- CATCHUP_MS of them (for a rate without a burst), and the rate holds over time. Not from
-- before they were due: after a hold (RateLimited) the type starts again at its rate.
local function token(ttype, since)
  local l = limits[ttype]
  if not (l and l.interval) then return true end
  local t = math.max(tat[ttype], since and math.max(clock - l.catchup, since) or clock)
  if t - clock > l.tolerance then return false end
  return t + l.interval
end

local function spend(ttype, t)
  if t ~= true then
    tat[ttype] = t
    tat_changed = true
  end
end

-- Where a pending task of ttype goes: 'held' (paused), 'aside' (no token, or tasks of its
-- type set aside before it), or the token to spend when it is claimed.
local function admit(ttype)
  if paused_types and paused_types[ttype] then return 'held' end
  if due[ttype] then return 'aside' end
  return token(ttype) or 'aside'
end

-- Set an id (or a key's marker) of ttype aside until the type's next token.
local function set_aside(ttype, item)
  redis.call('LPUSH', LIMITED .. ttype, item)
  if not due[ttype] then
    local l = limits[ttype]
    due[ttype] = (l and l.interval) and math.max(tat[ttype], clock) - l.tolerance or clock
    redis.call('ZADD', LIMITED_DUE, due[ttype], ttype)
  end
end

-- Serve key gid once: its marker was taken off the ring (t nil: the type's token is still to
-- be had) or out of its type's limited list (t: the token). Returns 'claimed' (its head task;
-- the marker back at the ring's far end, or dropped with the key at its concurrency or
-- empty), 'alone' (that task is a crash suspect: claim nothing beside it), 'stop' (the head is
-- a suspect W may not take now: the caller puts the marker back where it was), or 'moved'
-- (the marker dropped, held or set aside: nothing taken).
local function serve_key(gid, t)
  local ttype = gid_type(gid)
  if paused_types and paused_types[ttype] then
    redis.call('LPUSH', HELD .. ttype, '@' .. gid)
    counts.paused = counts.paused + 1
    return 'moved'
  end
  local g = redis.call('HMGET', G.groups, 'a:' .. gid, 'h:' .. gid)
  local kc, active = limits[ttype] and limits[ttype].kc or 0, tonumber(g[1] or 0)
  if (g[2] and tonumber(g[2]) > clock) or (kc > 0 and active >= kc) then
    redis.call('HDEL', G.groups, 'q:' .. gid)
    if g[2] and tonumber(g[2]) > clock then redis.call('ZADD', G.key_holds, g[2], gid) end
    return 'moved'
  end
  if t == nil then
    t = due[ttype] == nil and token(ttype)
    if not t then
      set_aside(ttype, '@' .. gid)
      counts.aside = counts.aside + 1
      return 'moved'
    end
  end
  local id, state, f
  repeat
    id = redis.call('RPOP', G.group .. gid)
    if not id then
      redis.call('HDEL', G.groups, 'q:' .. gid)
      return 'moved'
    end
    counts.ready = counts.ready - 1
    state, f = fields(id)
  until state == 'pending'
  local suspect = crashed(f)
  if suspect and not alone() then
    redis.call('RPUSH', G.group .. gid, id)
    counts.ready = counts.ready + 1
    if taken == 0 then out[1] = CODE_SUSPECT_WAITS end
    return 'stop'
  end
  f[KEY] = string.sub(gid, #ttype + #string.match(gid, '^%d+') + 3)
  claim(id, f)
  spend(ttype, t)
  moved[#moved + 1] = id
  redis.call('HINCRBY', G.groups, 'a:' .. gid, 1)
  if (kc == 0 or active + 1 < kc) and redis.call('LLEN', G.group .. gid) > 0 then
    redis.call('LPUSH', G.ring, gid)
  else
    redis.call('HDEL', G.groups, 'q:' .. gid)
  end
  return suspect and 'alone' or 'claimed'
end

-- Take from the ring until n more are claimed or it is empty; true when claiming must stop.
local function serve_ring(n)
  local goal, visits = taken + n, 0
  while taken < goal and visits < n + 1000 do  -- a visit that takes nothing drops a marker
    local gid = redis.call('RPOP', G.ring)
    if not gid then return false end
    visits = visits + 1
    local r = serve_key(gid, nil)
    if r == 'stop' then redis.call('RPUSH', G.ring, gid) end
    if r == 'stop' or r == 'alone' then return true end
  end
  return false
end

-- Take the set-aside tasks whose tokens are due, oldest first; true when claiming must stop.
local function take_due()
  for ttype, at in pairs(due) do
    if at <= clock and taken < max and not (paused_types and paused_types[ttype]) then
      local list, halt = LIMITED .. ttype, false
      while taken < max do
        local t = token(ttype, at)
        local item = t and redis.call('RPOP', list)
        if not item then break end
        if string.byte(item, 1) == 64 then  -- '@': a key's marker
          counts.aside = counts.aside - 1
          local r = serve_key(string.sub(item, 2), t)
          if r == 'stop' then
            redis.call('RPUSH', list, item)
            counts.aside = counts.aside + 1
          end
          halt = r == 'stop' or r == 'alone'
        else
          local state, f = fields(item)
          if state == 'pending' then
            local suspect = crashed(f)
            if suspect and not alone() then
              redis.call('RPUSH', list, item)
              if taken == 0 then out[1] = CODE_SUSPECT_WAITS end
              halt = true
            else
              claim(item, f)
              spend(ttype, t)
              moved[#moved + 1] = item
              halt = suspect
            end
          end
        end
        if halt then break end
      end
      if redis.call('LLEN', list) == 0 then
        redis.call('ZREM', LIMITED_DUE, ttype)
        due[ttype] = nil
      elseif not token(ttype, at) then
        local l = limits[ttype]
        due[ttype] = math.max(tat[ttype], clock) - l.tolerance
        redis.call('ZADD', LIMITED_DUE, due[ttype], ttype)
      end
      if halt then return true end
    end
  end
  return false
end

local halted = false  -- a crash suspect was met: claim nothing more
if moved_id ~= '' and redis.call('LPOS', PROCESSING, moved_id) then
  local id = moved_id
  local state, f = fields(id)
  local ours = state == 'processing' and redis.call('HGET', TASK .. id, 'worker') == worker
  -- Ours: claimed by W in a call whose reply was lost, keyed or not (a pending id never has
  -- a key): its key goes in the reply, so that the settle gives the key's slot back.
  if ours then f[KEY] = redis.call('HGET', TASK .. id, 'key') or false end
  local t = true
  if state == 'pending' and (flowing or paused_types) then t = admit(f[TYPE]) end
  if state ~= 'pending' and not ours then
    redis.call('LREM', PROCESSING, 1, id)
  elseif t == 'held' then
    redis.call('LREM', PROCESSING, 1, id)
    redis.call('LPUSH', HELD .. f[TYPE], id)
  elseif t == 'aside' then
    redis.call('LREM', PROCESSING, 1, id)
    set_aside(f[TYPE], id)
  elseif crashed(f) and (redis.call('LLEN', PROCESSING) > 1 or elsewhere > 0) then
    redis.call('LREM', PROCESSING, 1, id)
    local priority = redis.call('HGET', TASK .. id, 'priority')
    if ours then  -- given back as release.lua does: pending, its attempt undone, its key's slot freed
      redis.call('HINCRBY', TASK .. id, 'attempts', -1)
      hand_back(G, TASK .. id, id, f[KEY] or nil, f[TYPE], priority, true, clock)
    else
      push_ready(PENDING, PRIO, PRIORITIES, id, priority, 'RPUSH')
    end
    out[1] = CODE_SUSPECT_WAITS
    return out
  else
    -- ours: the claim whose reply was lost counted its attempt, and no handler ran it
    if ours then f[ATTEMPTS] = tostring(tonumber(f[ATTEMPTS] or '1') - 1) end
    claim(id, f)
    if state == 'pending' then spend(f[TYPE], t) end
    halted = crashed(f)
  end
end

if flowing and not halted then
  for _, gid in ipairs(redis.call('ZRANGEBYSCORE', G.key_holds, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', G.key_holds, gid)
    redis.call('HDEL', G.groups, 'h:' .. gid)
    group_wake(G, gid, clock)
  end
  halted = take_due() or serve_ring(math.ceil((max - taken) / 2))
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
      local t = true  -- the rate limit's token this task takes (true: none to take)
      if paused_types and state == 'pending' and paused_types[f[TYPE]] then  -- inline: once a task
        state = 'held'  -- taken off the list below like a skipped id, into its type's held list
        redis.call('LPUSH', HELD .. f[TYPE], id)
      elseif bound and state == 'pending' and effective(state, f, p) > bound then
        next_head = {id, state, f, effective(state, f, p)}
        break
      elseif flowing and state == 'pending' then
        t = admit(f[TYPE])
        if t == 'aside' then  -- likewise, into its type's limited list until its token
          state = 'aside'
          set_aside(f[TYPE], id)
        end
      end
      if state == 'pending' and crashed(f) then
        if alone() then
          used = used + 1
          moved[#moved + 1] = id
          claim(id, f)
          spend(f[TYPE], t)
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
        if t ~= true then spend(f[TYPE], t) end
      else
        skipped = skipped + 1
      end
    end
    if used > 0 then redis.call('LTRIM', list, 0, -(used + 1)) end
    if stop then
      halted = true
      return true
    end
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

if not halted then
  if prioritised then take_by_priority() else take_from(PENDING, 5, nil, nil) end
end
if flowing and not halted and taken < max then serve_ring(max - taken) end
for i = 1, #moved, 1000 do  -- in slices: unpack has a stack limit
  redis.call('LPUSH', PROCESSING, unpack(moved, i, math.min(i + 999, #moved)))
end
if tat_changed then
  local fields_ = {}
  for ttype, t in pairs(tat) do
    fields_[#fields_ + 1] = ttype
    fields_[#fields_ + 1] = string.format('%.3f', t)
  end
  redis.call('HSET', TAT, unpack(fields_))
end
for name, n in pairs(counts) do
  if n ~= 0 then redis.call('HINCRBY', G.groups, name, n) end
end
if flowing and taken < max then
  local soonest = false
  for ttype, at in pairs(due) do
    if not (paused_types and paused_types[ttype]) and (not soonest or at < soonest) then soonest = at end
  end
  local hold = redis.call('ZRANGE', G.key_holds, 0, 0, 'WITHSCORES')
  if hold[2] and (not soonest or tonumber(hold[2]) < soonest) then soonest = tonumber(hold[2]) end
  if soonest then out[3] = math.max(1, math.ceil(soonest - clock)) end
end
if taken > 0 then redis.call('ZADD', WORKERS, 'NX', now, worker) end
return out
