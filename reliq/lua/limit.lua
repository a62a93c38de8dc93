#!lua flags=allow-oom
-- Write one layer of the limits of task types, and the merged limits the claim reads.
-- KEYS[1] LIMITS   limits hash: type -> LIMIT_FIELDS (rate count, period ms, burst, key
--                  concurrency, ordered; 0 = none) joined by SEP (reliq/formats.py), what
--                  claim.lua and settle.lua enforce; a type with no limit has no field
-- KEYS[2] SOURCES  limit sources hash: type -> JSON {"declared": layer, "set": layer}
--                  (reliq/limits.py)
-- ARGV[1] which    the layer: 'declared' (a worker's @reliq.task, replaced whole) or 'set'
--                  (an operator's: the fields given replace those there, the others stay)
-- ARGV[2] layers   JSON {type: layer, or null to remove the layer}; a layer is {"rate":
--                  [count, period_ms, burst] | null, "key_concurrency": n | null, "ordered":
--                  bool | null}, a field left out not said, null saying "none" (a set null
--                  switches a declared field off)
-- ARGV[3] share    the partitions of the queue this one is one of (reliq/partitions.py; 1 for
--                  a queue of one): the merged rate is the layers' over ``share``, so all of
--                  them together never pass it (the period longer, the burst shared)
-- Returns the number of types whose merged limits changed.
-- 'ordered' without a key concurrency of 1 is refused by reliq/limits.py; here it counts only
-- with 1, so that two operators racing cannot make the claim read it otherwise.
--- @format LIMIT_FORMAT
local LIMITS, SOURCES = KEYS[1], KEYS[2]
local which, layers, share = ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3] or '1') or 1
local changed = 0
local function pick(src, name)
  if src.set and src.set[name] ~= nil then return src.set[name] end
  if src.declared then return src.declared[name] end
  return nil
end
local function value(v)
  if v == nil or v == cjson.null or v == false then return nil end
  return v
end
for ttype, new in pairs(layers) do
  local raw = redis.call('HGET', SOURCES, ttype)
  local src = raw and cjson.decode(raw) or {}
  if new == cjson.null then
    src[which] = nil
  elseif which == 'set' and type(src.set) == 'table' then
    for name, v in pairs(new) do src.set[name] = v end
  else
    src[which] = new
  end
  if src.declared == cjson.null then src.declared = nil end
  if src.set == cjson.null then src.set = nil end
  if src.declared or src.set then
    redis.call('HSET', SOURCES, ttype, cjson.encode(src))
  else
    redis.call('HDEL', SOURCES, ttype)
  end
  local rate, kc, ordered = value(pick(src, 'rate')), value(pick(src, 'key_concurrency')), value(pick(src, 'ordered'))
  local eff = false
  if rate or kc then
    kc = kc or 0
    eff = string.format(LIMIT_FORMAT, rate and rate[1] or 0, rate and rate[2] * share or 0,
                        rate and math.ceil(rate[3] / share) or 0, kc, (ordered and kc == 1) and 1 or 0)
  end
  if eff ~= (redis.call('HGET', LIMITS, ttype) or false) then
    changed = changed + 1
    if eff then redis.call('HSET', LIMITS, ttype, eff) else redis.call('HDEL', LIMITS, ttype) end
  end
end
return changed
