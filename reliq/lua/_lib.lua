-- Shared helpers, prepended to every script by reliq/scripts.py.

-- Milliseconds on the Redis server's clock: every decision about time uses it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A record's body (format 2, reliq/formats.py: make_body) of opts and payload, and back.
local function make_body(opts, payload)
  return #opts .. ':' .. opts .. payload
end

local function split_body(body)
  local digits = string.match(body, '^%d+')
  local at = #digits + 2
  local n = tonumber(digits)
  return string.sub(body, at, at + n - 1), string.sub(body, at + n)
end

-- Move a task to the dead-letter list with its reason. Nothing is dropped here: a
-- configured cap is kept by dead_trim.lua, which archives what it evicts.
local function dead_letter(dead_key, stats_key, task_prefix, id, reason, err, now)
  redis.call('HSET', task_prefix .. id, 'state', 'dead', 'reason', reason,
             'last_error', err, 'finished_at', now)
  redis.call('LPUSH', dead_key, id)
  redis.call('HINCRBY', stats_key, 'dead', 1)
end

-- The run history (docs/retries.md): every run that does not succeed leaves an entry in
-- its record's field 'runs', a JSON array of RUN_FIELDS objects (reliq/formats.py), oldest
-- first, the last RUNS_KEPT kept, each error cut at RUNS_ERROR_MAX bytes. A field of the
-- record, not a key of its own: it goes, expires and is archived with the record on every
-- path, and a task that succeeds at its first attempt pays nothing for it. Call it before
-- the transition: attempt is the one that ran (a snooze gives it back after). became: the
-- state the run left the task in; worker: who ran it ('' or nil: the record's).
--- @format RUNS
local function cut_utf8(text, max)  -- at most max bytes, never half a character
  if #text <= max then return text end
  local i = max
  while i > 0 and string.byte(text, i + 1) >= 0x80 and string.byte(text, i + 1) < 0xC0 do i = i - 1 end
  return string.sub(text, 1, i)
end

local function note_run(key, outcome, err, now, became, worker)
  local f = redis.call('HMGET', key, 'runs', 'attempts', 'worker')
  local runs = f[1] and cjson.decode(f[1]) or {}
  while #runs >= RUNS_KEPT do table.remove(runs, 1) end
  runs[#runs + 1] = {attempt = tonumber(f[2]) or 0, at = now, worker = (worker and worker ~= '' and worker) or f[3] or '',
                     outcome = outcome, error = cut_utf8(err or '', RUNS_ERROR_MAX), state = became}
  redis.call('HSET', key, 'runs', cjson.encode(runs))
end

-- A task that asked to run again later (reliq.Snooze) waits in the delayed set until
-- due, scheduled as if enqueued with a delay; the attempt its claim counted is given back.
local function snooze(delayed_key, key, id, due)
  redis.call('HINCRBY', key, 'attempts', -1)
  redis.call('HSET', key, 'state', 'scheduled')
  redis.call('ZADD', delayed_key, due, id)
end

-- Unique tasks (docs/retries.md). A lock, the unique prefix .. '<#type>:<type>:<key>',
-- holds the id of the task that stands for its type and key while that task lives; the
-- task's record keeps the lock's name (field 'unique') to free it when it ends. Not a
-- TTL: a lock goes when its task ends. A lock left behind whatever the reason (an end
-- that did not free it, a record trimmed or deleted) never blocks: an enqueue that finds
-- its holder ended or gone takes the lock over.
--- @format END_STATES

-- The name of a task's lock (after the unique prefix), or nil when the task is not
-- unique. ``spec`` (reliq/formats.py: Unique): '' (the type's default, ``type_unique``), '-'
-- (not unique), '#' (the default key: a SHA1 of the payload as stored), '=' .. a key of the
-- producer's own.
--- @format UNIQUE
local function unique_lock(ttype, payload, spec, type_unique)
  if spec == UNIQUE_TYPE_DEFAULT then
    if not type_unique then return nil end
    spec = UNIQUE_PAYLOAD
  end
  if spec == UNIQUE_NO then return nil end
  local key = spec == UNIQUE_PAYLOAD and redis.sha1hex(payload) or string.sub(spec, #UNIQUE_KEY + 1)
  return #ttype .. ':' .. ttype .. ':' .. key
end

-- The id of the live task holding lock ``lock`` (a full key), or false when it is free:
-- never taken, freed, or left behind by a task that has ended or whose record is gone.
local function unique_holder(lock, task_prefix)
  local holder = redis.call('GET', lock)
  if not holder then return false end
  local state = redis.call('HGET', task_prefix .. holder, 'state')
  if state and not END_STATES[state] then return holder end
  return false
end

-- Task ``id`` ended: free its lock (``lock``: its name, from the record or the worker's
-- batch; nil or '' when it has none) if the lock is still its own.
local function unique_release(unique_prefix, lock, id)
  if lock and lock ~= '' and redis.call('GET', unique_prefix .. lock) == id then
    redis.call('DEL', unique_prefix .. lock)
  end
end

-- Wake-ups (reliq/worker/nudges.py). An idle worker waits on one pub/sub connection for
-- all its queues, not on their lists: a script that makes a queue's pending list non-empty
-- publishes on the queue's ready channel, named like the list (reliq/keys.py:
-- ready_channel), with SPUBLISH where Redis has it (7.0 on: on a cluster the message stays
-- on the queue's shard), else PUBLISH. Only an empty list's first push publishes, so a busy
-- queue's pushes pay one comparison. ``why``: '' (tasks), or 'resumed' (a paused queue's
-- tasks may be claimed again).
local PUBLISH = redis.REDIS_VERSION_NUM and 'SPUBLISH' or 'PUBLISH'
local function ready_nudge(pending_key, why)
  redis.call(PUBLISH, pending_key, why)
end

-- Priorities (reliq/priorities.py). A pending id of the default priority waits in the
-- queue's pending list, one of another priority p in the list prio_prefix .. p; the flag
-- key (keys.priorities) is set whenever such a list is created, so that a claim that
-- finds no flag need not look at them. A worker with nothing to do blocks on pending
-- alone (its ready channel, above), so an id put in another list while pending is empty
-- pushes WAKE_MARK there (and nudges); a claim drops it like any id without a record.
local DEFAULT_PRIORITY = '5'
local OTHER_PRIORITIES = {'9', '8', '7', '6', '4', '3', '2', '1', '0'}  -- highest first
--- @format WAKE_MARK

-- The list a pending task of ``priority`` (its record's field: nil for the default) waits in.
local function ready_list(pending_key, prio_prefix, priority)
  if not priority or priority == DEFAULT_PRIORITY then return pending_key end
  return prio_prefix .. priority
end

-- Put pending task ``id`` of ``priority`` in its list: with ``push`` 'LPUSH' at the back,
-- with 'RPUSH' at the front (taken next).
local function push_ready(pending_key, prio_prefix, flag_key, id, priority, push)
  local list = ready_list(pending_key, prio_prefix, priority)
  local n = redis.call(push, list, id)
  if list ~= pending_key then
    if n == 1 then redis.call('SET', flag_key, '1') end
    if redis.call('LLEN', pending_key) == 0 then
      redis.call('LPUSH', pending_key, WAKE_MARK)
      ready_nudge(pending_key, '')
    end
  elseif n == 1 then
    ready_nudge(pending_key, '')
  end
end


-- How long an unread wake-up list lives (ms): a hub that is gone leaves nothing behind.
local WAKE_TTL_MS = '60000'

-- Tasks just ended (succeeded, dead or cancelled): tell whoever waits for them
-- (reliq/waiting.py). Callers check once a call that the waiters hash exists, so tasks
-- of a queue nobody waits on cost nothing more. Here one HMGET for all of ``ids`` finds
-- the hubs that marked them; one HDEL takes the marks, and each hub gets its ids in one
-- LPUSH (a command a task cost ~5k instructions each, callgrind).
local function wake(waiters_key, wake_prefix, ids)
  for first = 1, #ids, 1000 do  -- in slices: unpack has a stack limit
    local last = math.min(first + 999, #ids)
    local marks = redis.call('HMGET', waiters_key, unpack(ids, first, last))
    local marked, by_hub, hubs = {}, {}, {}
    for i = 1, last - first + 1 do
      if marks[i] then
        local id = ids[first + i - 1]
        marked[#marked + 1] = id
        for hub in string.gmatch(marks[i], '%S+') do
          if not by_hub[hub] then
            by_hub[hub] = {}
            hubs[#hubs + 1] = hub
          end
          table.insert(by_hub[hub], id)
        end
      end
    end
    if #marked > 0 then redis.call('HDEL', waiters_key, unpack(marked)) end
    for _, hub in ipairs(hubs) do
      redis.call('LPUSH', wake_prefix .. hub, unpack(by_hub[hub]))
      redis.call('PEXPIRE', wake_prefix .. hub, WAKE_TTL_MS)
    end
  end
end

-- Retention of succeeded records (BullMQ's removeOnComplete {age, count}): a list of their
-- ids by finish time, newest at the left, loses from its old end what is past its count,
-- then what finished more than age ms ago, at most budget ids; their records are
-- deleted. Returns how many went by count (trimmed) and by age (expired); an id whose
-- record is already gone leaves the list uncounted.
local function retain(list, task_prefix, now, age, count, budget)
  local trimmed, expired = 0, 0
  local over = math.min(redis.call('LLEN', list) - count, budget)
  if over > 0 then
    local old = redis.call('RPOP', list, over)
    for i = 1, #old do old[i] = task_prefix .. old[i] end
    for i = 1, #old, 1000 do  -- in slices: unpack has a stack limit
      trimmed = trimmed + redis.call('DEL', unpack(old, i, math.min(i + 999, #old)))
    end
    budget = budget - #old
  end
  local cutoff = now - age
  while budget > 0 do
    local oldest = redis.call('LINDEX', list, -1)
    if not oldest then break end
    local at = redis.call('HGET', task_prefix .. oldest, 'finished_at')
    if at and tonumber(at) > cutoff then break end
    redis.call('RPOP', list)
    if at then
      redis.call('DEL', task_prefix .. oldest)
      expired = expired + 1
    end
    budget = budget - 1
  end
  return trimmed, expired
end

-- A task type's enqueue defaults (reliq/type_defaults.py): a function of the type that
-- returns its decoded entry of the types hash ({} when it has none), each entry read once
-- a call, and whether any type has defaults. A queue whose types have no defaults has no
-- such hash: one EXISTS a call.
local function type_defaults_reader(types_key)
  local none = {}
  if redis.call('EXISTS', types_key) == 0 then
    return function() return none end, false
  end
  local seen = {}
  return function(ttype)
    local d = seen[ttype]
    if not d then
      local raw = redis.call('HGET', types_key, ttype)
      d = raw and cjson.decode(raw) or none
      seen[ttype] = d
    end
    return d
  end, true
end

-- Cancelling (docs/cancel.md). A task ends cancelled: its record stays (state cancelled,
-- kept ttl ms) or, with mode CANCEL_FORGET (HTTP DELETE), goes at once with its idempotency
-- key, so that a repeat of the request enqueues anew. Callers count it and wake waiters.
-- A unique task frees its lock (unique_prefix: the locks' prefix).
--- @format CANCEL
local function end_cancelled(key, idem_prefix, unique_prefix, id, mode, now, ttl)
  unique_release(unique_prefix, redis.call('HGET', key, 'unique'), id)
  if mode == CANCEL_FORGET then
    local idem = redis.call('HGET', key, 'idem')
    if idem and redis.call('GET', idem_prefix .. idem) == id then redis.call('DEL', idem_prefix .. idem) end
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now)
    redis.call('PEXPIRE', key, ttl)
  end
end

-- A running task's cancel request: how it ends (its record's 'cancel' field, CANCEL_KEEP or
-- CANCEL_FORGET), or false when none was made. requests is the worker's cancel-request set;
-- asked tells whether that set exists (one EXISTS a call, so that scripts over many
-- tasks pay nothing a task when no cancel is outstanding). The id leaves the set.
local function cancel_request(requests, asked, key, id)
  if not asked or redis.call('SREM', requests, id) == 0 then return false end
  return redis.call('HGET', key, 'cancel') or CANCEL_KEEP
end

-- When W dies (reap.lua) or stops (release.lua) still holding a task it was asked to
-- cancel, the task ends cancelled instead of going back to pending; whoever waits is
-- woken. Returns whether it did; count_cancelled_running() counts them once a call.
local function end_held_cancel(requests, asked, key, id, idem_prefix, unique_prefix, now, ttl, waiters,
                                wake_prefix)
  local cancel = cancel_request(requests, asked, key, id)
  if not cancel then return false end
  end_cancelled(key, idem_prefix, unique_prefix, id, cancel, now, ttl)
  if redis.call('EXISTS', waiters) == 1 then wake(waiters, wake_prefix, {id}) end
  return true
end

local function count_cancelled_running(stats, n)
  if n > 0 then
    redis.call('HINCRBY', stats, 'cancelled', n)
    redis.call('HINCRBY', stats, 'cancelled_running', n)
  end
end

-- What a task reported of its progress belongs to one attempt: it goes when the task
-- is retried or requeued.
local function clear_progress(key)
  redis.call('HDEL', key, 'progress', 'progress_message', 'progress_at')
end

-- Keys of tasks (docs/flow-control.md). A group is one key of one task type; its id, the
-- gid, is '<#type>:<type>:<key>' (reliq/keys.py: group_id). Its pending ids wait in the list
-- G.group .. gid; G.groups holds its slots taken ('a:' .. gid), whether it has a marker
-- ('q:' .. gid: on the ring, or set aside in a held or limited list as '@' .. gid) and the
-- end of a hold ('h:' .. gid); and the queue's counts 'ready' (ids in keys' lists), 'aside'
-- (markers in limited lists) and 'paused' (markers in held lists).
-- G = {groups = hash, group = list prefix, ring = list, key_holds = zset, pending = list,
--      prio = the other priorities' list prefix, flag = the priorities flag}: the keys the
-- scripts that move keyed tasks take (reliq/calls.py: group_keys, after PENDING, PRIO and
-- PRIORITIES of their own). A keyed id is never in a ready list of a priority; a key with
-- tasks and a free slot has its marker somewhere.

local function gid_of(ttype, key)
  return #ttype .. ':' .. ttype .. ':' .. key
end

local function gid_type(gid)
  local n = string.match(gid, '^(%d+):')
  return string.sub(gid, #n + 2, #n + 1 + tonumber(n))
end

-- Put key gid's marker on the far end of the ring; an empty pending gets the wake mark and
-- a nudge (as for a task of another priority).
local function ring_push(G, gid)
  if redis.call('LPUSH', G.ring, gid) == 1 and redis.call('LLEN', G.pending) == 0 then
    redis.call('LPUSH', G.pending, WAKE_MARK)
    ready_nudge(G.pending, '')
  end
end

-- Give key gid a marker on the ring, unless it has one, is held (then it waits in the
-- key-holds zset) or has no task. now: ms, a number.
local function group_wake(G, gid, now)
  local g = redis.call('HMGET', G.groups, 'q:' .. gid, 'h:' .. gid)
  if g[1] then return end
  if g[2] then
    if tonumber(g[2]) > now then
      redis.call('ZADD', G.key_holds, g[2], gid)
      return
    end
    redis.call('HDEL', G.groups, 'h:' .. gid)
  end
  if redis.call('LLEN', G.group .. gid) == 0 then return end
  redis.call('HSET', G.groups, 'q:' .. gid, '1')
  ring_push(G, gid)
end

-- A task of key gid becomes ready: onto its key's list, at the taking end (head = true: it
-- runs next, e.g. given back by a dead worker) or the far end.
local function group_push(G, gid, id, head, now)
  local n = redis.call(head and 'RPUSH' or 'LPUSH', G.group .. gid, id)
  redis.call('HINCRBY', G.groups, 'ready', 1)
  if n == 1 then group_wake(G, gid, now) end
end

-- A task of key gid gave its slot back (settled, reaped, released, cancelled while it kept one).
local function group_release(G, gid, now)
  if redis.call('HINCRBY', G.groups, 'a:' .. gid, -1) <= 0 then redis.call('HDEL', G.groups, 'a:' .. gid) end
  group_wake(G, gid, now)
end

-- A pending task becomes ready again (given back, requeued): with a key onto its key's list,
-- else onto the list of its priority; at the taking end with head. A keyed task the worker
-- had claimed (claimed = true) gives its key's slot back too.
local function make_ready(G, id, key, ttype, priority, head, claimed, now)
  if key then
    local gid = gid_of(ttype, key)
    group_push(G, gid, id, head, now)
    if claimed then group_release(G, gid, now) end
  else
    push_ready(G.pending, G.prio, G.flag, id, priority, head and 'RPUSH' or 'LPUSH')
  end
end

-- A task becomes pending again (given back, promoted, requeued): its record says so, with
-- ``...`` (more field, value pairs) written too. A record of enqueue.lua's plain path has no
-- enqueued_at until then (reliq/formats.py: RecordFormat): its queued_at stood for it, so it
-- becomes the enqueued_at first.
local function queue_again(key, now, ...)
  local f = redis.call('HMGET', key, 'enqueued_at', 'queued_at')
  if f[1] or not f[2] then
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now, ...)
  else
    redis.call('HSET', key, 'state', 'pending', 'queued_at', now, 'enqueued_at', f[2], ...)
  end
end

-- A task W held goes back to pending (reap.lua, release.lua), at the taking end to run next;
-- what it reported of its progress goes with the attempt. claimed: W had claimed it (it
-- gives its key's slot back).
local function hand_back(G, key, id, tkey, ttype, priority, claimed, now)
  queue_again(key, now)
  clear_progress(key)
  make_ready(G, id, tkey, ttype, priority, true, claimed, now)
end

-- W is gone (reaped, released): its lists and its registration go, and the running tasks
-- whose cancels it ended are counted.
local function drop_worker(stats, workers, worker, processing, info, cancels, cancelled)
  count_cancelled_running(stats, cancelled)
  redis.call('DEL', processing, info, cancels)
  redis.call('ZREM', workers, worker)
end

-- Send tasks just taken out of the dead list back to pending (the list of their priority, or
-- of their key) with a fresh retry budget; ids whose record is gone are skipped. Returns how
-- many went back. A unique task takes its lock back unless another live task holds it
-- meanwhile (it then runs all the same: someone asked for it by its id).
local function requeue_dead(G, stats_key, task_prefix, unique_prefix, ids, now)
  local n = 0
  for _, id in ipairs(ids) do
    local key = task_prefix .. id
    local f = redis.call('HMGET', key, 'type', 'key', 'priority', 'unique')
    if f[1] then
      if f[4] and not unique_holder(unique_prefix .. f[4], task_prefix) then
        redis.call('SET', unique_prefix .. f[4], id)
      end
      queue_again(key, now, 'attempts', 0, 'failures', 0, 'crashes', 0, 'reason', '')
      make_ready(G, id, f[2], f[1], f[3], false, false, now)
      n = n + 1
    end
  end
  if n > 0 then redis.call('HINCRBY', stats_key, 'requeued', n) end
  return n
end
