-- Enqueue one or many tasks, all or nothing.
-- KEYS[1] PENDING  pending list
-- KEYS[2] DELAYED  delayed zset
-- KEYS[3] STATS    stats hash
-- KEYS[4] TASK     task key prefix
-- KEYS[5] IDEM     idempotency key prefix
-- KEYS[6] TYPES    types hash: each type's enqueue defaults, as JSON (reliq/type_defaults.py)
-- KEYS[7] PRIO     prefix of the other priorities' pending lists (+ priority)
-- KEYS[8] PRIORITIES flag: a list of another priority may hold ids (set as one is created)
-- KEYS[9] UNIQUE_LOCKS  unique lock prefix (_lib.lua: unique_lock)
-- KEYS[10..13]     the keys of tasks (_lib.lua: G): a task with a key goes onto its key's
--                  list, not pending (docs/flow-control.md)
-- ARGV[1] idem_ttl idempotency TTL (ms)
-- ARGV[2] tasks    the tasks as one flat JSON array, ENQUEUE_FIELDS (reliq/formats.py) a
--                  task one after another: id,
--                  type, payload, max_retries ('' = the type's default, else
--                  default_retries), opts (the middle of the record's opts, '|timeout_ms|trace|':
--                  the script puts max_retries before it and the unique lock's name after), delay_ms (0 = ready
--                  now), idempotency_key ('' = none), run_at_ms (0 = none; else the due time
--                  on the epoch, which wins over delay_ms), priority ('' for the default: such a task is written as
--                  before priorities existed), key ('' = none), unique ('' = the type's default, '-' = no,
--                  '#' = the default key, '=' .. key = this key); numbers as strings: one
--                  argument instead of twelve per task, because encoding arguments was
--                  most of the API's cost of a batch.
-- ARGV[3] limit    admission limit: refuse when pending (all priorities, and the keys'
--                  lists) holds this many tasks already (0 = none)
-- ARGV[4] default_retries  the queue's max_retries, for tasks whose type has no default
-- Returns {CODE_OK, then for each task the id that stands for it and ENQUEUED_CREATED if it
-- was created now, ENQUEUED_REPEATED if an earlier request with the same idempotency key
-- created it, ENQUEUED_EXISTING if a live task (pending, scheduled, retrying, running)
-- holds its unique lock: that task's id}; or
-- {CODE_QUEUE_FULL, pending} when the limit is reached: then nothing was written.
-- (Codes: reliq/formats.py.) A unique task takes its lock when created (SET, no TTL); the
-- scripts that end tasks free it. An idempotency key is recorded only for a task created.
-- Numbers go to redis.call as strings made once: Lua turns a number into a string with
-- sprintf, which costs as much as a small command (callgrind: a third of this script).
--- @format ENQUEUE_FIELDS
--- @format CODE
--- @format ENQUEUED
local PENDING, DELAYED, STATS, TASK, IDEM, TYPES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIO, PRIORITIES, UNIQUE_LOCKS = KEYS[7], KEYS[8], KEYS[9]
local G = {groups = KEYS[10], group = KEYS[11], ring = KEYS[12], key_holds = KEYS[13], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local idem_ttl, tasks, limit, default_retries = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local now_s = tostring(now)
if limit > 0 then
  local pending = redis.call('LLEN', PENDING) + tonumber(redis.call('HGET', G.groups, 'ready') or 0)
  for _, p in ipairs(OTHER_PRIORITIES) do pending = pending + redis.call('LLEN', PRIO .. p) end
  if pending >= limit then return {CODE_QUEUE_FULL, pending} end
end
local type_defaults = type_defaults_reader(TYPES)
local out = {CODE_OK}
local ready = {}  -- ids for pending, pushed together (in order) at the end
local created, unique_hits = 0, 0
local b = cjson.decode(tasks)  -- flat: a table a task cost cjson twice as much (callgrind)
for o = 0, #b - 1, #ENQUEUE_FIELDS do
  local id, idem = b[o + ID], b[o + IDEMPOTENCY_KEY]
  local existing, code, lock = false, ENQUEUED_REPEATED, nil
  if idem ~= '' then
    existing = redis.call('GET', IDEM .. idem)
  end
  if not existing then
    lock = unique_lock(b[o + TYPE], b[o + PAYLOAD], b[o + UNIQUE], type_defaults(b[o + TYPE]).unique)
    existing = lock and unique_holder(UNIQUE_LOCKS .. lock, TASK)
    if existing then code, unique_hits = ENQUEUED_EXISTING, unique_hits + 1 end
  end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = code
  else
    if idem ~= '' then
      redis.call('SET', IDEM .. idem, id, 'PX', idem_ttl)
    end
    local due = now + tonumber(b[o + DELAY_MS])
    if tonumber(b[o + RUN_AT_MS]) > 0 then due = tonumber(b[o + RUN_AT_MS]) end
    local defaults = type_defaults(b[o + TYPE])
    local max_retries = b[o + MAX_RETRIES]
    if max_retries == '' then
      max_retries = defaults.max_retries and tostring(defaults.max_retries) or default_retries
    end
    -- opts (reliq/formats.py: OPTS_FIELDS): the producer sent its middle (timeout_ms, trace).
    -- max_retries is a field of its own too: the monitor and workers of the version before
    -- opts read it there (docs/architecture.md: upgrades in either order).
    local opts = max_retries .. b[o + OPTS] .. (lock or '')
    local fields = {'type', b[o + TYPE], 'body', #opts .. ':' .. opts .. b[o + PAYLOAD], 'enqueued_at', now_s}
    if idem ~= '' then  -- so that deleting the task (cancel.lua) frees its key
      fields[#fields + 1] = 'idem'
      fields[#fields + 1] = idem
    end
    local priority = b[o + PRIORITY] ~= '' and b[o + PRIORITY]  -- false for the default
    if priority then
      fields[#fields + 1] = 'priority'
      fields[#fields + 1] = priority
    end
    if lock then  -- so that the scripts ending the task free its lock (opts has it for the claim)
      redis.call('SET', UNIQUE_LOCKS .. lock, id)
      fields[#fields + 1] = 'unique'
      fields[#fields + 1] = lock
    end
    local tkey = b[o + KEY] ~= '' and b[o + KEY]
    if tkey then
      fields[#fields + 1] = 'key'
      fields[#fields + 1] = tkey
    end
    if due > now then
      redis.call('HSET', TASK .. id, 'state', 'scheduled', unpack(fields))
      redis.call('ZADD', DELAYED, due, id)
    else
      redis.call('HSET', TASK .. id, 'state', 'pending', 'queued_at', now_s, unpack(fields))
      if tkey then
        group_push(G, gid_of(b[o + TYPE], tkey), id, false, now)
      elseif priority then
        push_ready(PENDING, PRIO, PRIORITIES, id, priority, 'LPUSH')
      else
        ready[#ready + 1] = id
      end
    end
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = ENQUEUED_CREATED
  end
end
for i = 1, #ready, 1000 do  -- in slices: unpack has a stack limit
  local last = math.min(i + 999, #ready)
  if redis.call('LPUSH', PENDING, unpack(ready, i, last)) == last - i + 1 then ready_nudge(PENDING, '') end
end
if created > 0 then
  redis.call('HINCRBY', STATS, 'enqueued', created)
end
if unique_hits > 0 then
  redis.call('HINCRBY', STATS, 'unique_hits', unique_hits)
end
return out
