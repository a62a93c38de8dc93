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
--                  task one after another: id, type, body (the record's, its opts holding
--                  the task's or the queue's max_retries), rest ('' for a task that sets
--                  nothing more, else an array of ENQUEUE_REST: whether it gave max_retries,
--                  delay_ms (0 = ready now), idempotency_key ('' = none), run_at_ms (0 =
--                  none; else the due time on the epoch, which wins over delay_ms), unique
--                  ('' = the type's default, '-' = no, '#' = the default key, '=' .. key =
--                  this key), key ('' = none), priority ('' for the default: such a task is
--                  written as before priorities existed)); numbers as strings: one
--                  argument instead of twelve per task, because encoding arguments was
--                  most of the API's cost of a batch.
-- ARGV[3] limit    admission limit: refuse when pending (all priorities, and the keys'
--                  lists) holds this many tasks already (0 = none)
-- ARGV[4] format   the record format to write (reliq/formats.py: RecordFormat), as the
--                  producer last read the queue's (reliq/keys.py: format; records.lua):
--                  one read every few seconds, not a GET a call. A producer that has not
--                  seen an upgrade yet writes format 1, which every version reads.
-- Returns {CODE_OK, then for each task not created now: its place in the batch (1 = the
-- first), the id that stands for it, and ENQUEUED_REPEATED if an earlier request with the
-- same idempotency key created it, ENQUEUED_EXISTING if a live task (pending, scheduled,
-- retrying, running) holds its unique lock}: a task not named was created under its own
-- id (a reply a task cost ~2,000 instructions, callgrind); or
-- {CODE_QUEUE_FULL, pending} when the limit is reached: then nothing was written.
-- (Codes: reliq/formats.py.) A unique task takes its lock when created (SET, no TTL); the
-- scripts that end tasks free it. An idempotency key is recorded only for a task created.
-- A task whose rest is '' on a queue whose types have no defaults and whose records are of
-- format 2 is written as it comes, in one HSET of four fields (the plain path: no
-- enqueued_at, which its queued_at stands for until it is queued again, _lib.lua:
-- queue_again; a field less is ~3,000 instructions); the others go through enqueue_one.
-- Numbers go to redis.call as strings made once: Lua turns a number into a string with
-- sprintf, which costs as much as a small command (callgrind: a third of this script).
--- @format ENQUEUE_FIELDS
--- @format ENQUEUE_REST
--- @format CODE
--- @format ENQUEUED
--- @format RECORD
local PENDING, DELAYED, STATS, TASK, IDEM, TYPES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local PRIO, PRIORITIES, UNIQUE_LOCKS = KEYS[7], KEYS[8], KEYS[9]
local G = {groups = KEYS[10], group = KEYS[11], ring = KEYS[12], key_holds = KEYS[13], pending = PENDING, prio = PRIO,
           flag = PRIORITIES}
local idem_ttl, tasks, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local now_s = tostring(now)
if limit > 0 then
  local pending = redis.call('LLEN', PENDING) + tonumber(redis.call('HGET', G.groups, 'ready') or 0)
  for _, p in ipairs(OTHER_PRIORITIES) do pending = pending + redis.call('LLEN', PRIO .. p) end
  if pending >= limit then return {CODE_QUEUE_FULL, pending} end
end
local fields_format = tonumber(ARGV[4]) ~= RECORD_BODY
local type_defaults, typed = type_defaults_reader(TYPES)
local out = {CODE_OK}
local ready, n_ready = {}, 0  -- ids for pending, pushed together (in order) at the end
local created, unique_hits = 0, 0
local PLAIN = {'', '0', '', '0', '', '', ''}  -- the rest of a task whose rest is '' (ENQUEUE_REST)

-- A record of format 1 (RECORD_FIELDS) for the fields of format 2's body.
local function as_fields(fields, body)
  local opts, payload = split_body(body)
  fields[#fields + 1] = 'payload'
  fields[#fields + 1] = payload
  for _, f in ipairs({'opts', opts, 'max_retries', string.match(opts, '^%d+'), 'attempts', '0', 'failures', '0',
                      'crashes', '0'}) do
    fields[#fields + 1] = f
  end
end

-- The task at o (an offset into the batch) as the general path takes it.
local function enqueue_one(b, o, place)
  local id, ttype, body = b[o + ID], b[o + TYPE], b[o + BODY]
  local r = b[o + REST] == '' and PLAIN or b[o + REST]
  local idem = r[IDEMPOTENCY_KEY]
  local existing, code, lock = false, ENQUEUED_REPEATED, nil
  if idem ~= '' then
    existing = redis.call('GET', IDEM .. idem)
  end
  local defaults = type_defaults(ttype)
  local opts, payload = split_body(body)
  if not existing then
    lock = unique_lock(ttype, payload, r[UNIQUE], defaults.unique)
    existing = lock and unique_holder(UNIQUE_LOCKS .. lock, TASK)
    if existing then code, unique_hits = ENQUEUED_EXISTING, unique_hits + 1 end
  end
  if existing then
    out[#out + 1] = place
    out[#out + 1] = existing
    out[#out + 1] = code
    return
  end
  if idem ~= '' then
    redis.call('SET', IDEM .. idem, id, 'PX', idem_ttl)
  end
  local due = now + tonumber(r[DELAY_MS])
  if tonumber(r[RUN_AT_MS]) > 0 then due = tonumber(r[RUN_AT_MS]) end
  -- opts (reliq/formats.py: OPTS_FIELDS): the type's default retries, unless the task gave
  -- its own, and the unique lock's name last.
  if (r[RETRIES] ~= '1' and defaults.max_retries) or lock then
    if r[RETRIES] ~= '1' and defaults.max_retries then
      opts = tostring(defaults.max_retries) .. string.sub(opts, #string.match(opts, '^%d*') + 1)
    end
    opts = opts .. (lock or '')
    body = make_body(opts, payload)
  end
  local fields = {'type', ttype, 'enqueued_at', now_s}
  if fields_format then
    as_fields(fields, body)
  else
    fields[#fields + 1] = 'body'
    fields[#fields + 1] = body
  end
  if idem ~= '' then  -- so that deleting the task (cancel.lua) frees its key
    fields[#fields + 1] = 'idem'
    fields[#fields + 1] = idem
  end
  local priority = r[PRIORITY] ~= '' and r[PRIORITY]  -- false for the default
  if priority then
    fields[#fields + 1] = 'priority'
    fields[#fields + 1] = priority
  end
  if lock then  -- so that the scripts ending the task free its lock (opts has it for the claim)
    redis.call('SET', UNIQUE_LOCKS .. lock, id)
    fields[#fields + 1] = 'unique'
    fields[#fields + 1] = lock
  end
  local tkey = r[KEY] ~= '' and r[KEY]
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
      group_push(G, gid_of(ttype, tkey), id, false, now)
    elseif priority then
      push_ready(PENDING, PRIO, PRIORITIES, id, priority, 'LPUSH')
    else
      n_ready = n_ready + 1
      ready[n_ready] = id
    end
  end
  created = created + 1
end

local b = cjson.decode(tasks)  -- flat: a table a task cost cjson twice as much (callgrind)
local plain = not typed and not fields_format
local W = #ENQUEUE_FIELDS
for o = 0, #b - 1, W do
  if plain and b[o + REST] == '' then  -- the plain path
    local id = b[o + ID]
    redis.call('HSET', TASK .. id, 'state', 'pending', 'queued_at', now_s, 'type', b[o + TYPE], 'body', b[o + BODY])
    n_ready = n_ready + 1
    ready[n_ready] = id
    created = created + 1
  else
    enqueue_one(b, o, o / W + 1)
  end
end
for i = 1, n_ready, 1000 do  -- in slices: unpack has a stack limit
  local last = math.min(i + 999, n_ready)
  if redis.call('LPUSH', PENDING, unpack(ready, i, last)) == last - i + 1 then ready_nudge(PENDING, '') end
end
if created > 0 then
  redis.call('HINCRBY', STATS, 'enqueued', created)
end
if unique_hits > 0 then
  redis.call('HINCRBY', STATS, 'unique_hits', unique_hits)
end
return out
