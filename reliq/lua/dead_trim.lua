-- Keep the dead-letter list within its cap: the oldest dead tasks are written to the
-- archive stream and only then deleted, in this one script, so no crash can leave a
-- task neither dead-lettered nor archived. The archive keeps its own limit; what
-- falls off it is counted too.
-- KEYS[1] dead list  KEYS[2] archive stream  KEYS[3] stats hash  KEYS[4] task key prefix
-- ARGV[1] dead-letter cap (0 = none)  ARGV[2] archive cap  ARGV[3] most to evict this call
-- Returns {evicted ids, ids fallen off the archive}; call again while as many as
-- ARGV[3] were evicted.
local cap, archive_cap, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local evicted, dropped = {}, {}
if cap > 0 then
  local over = math.min(redis.call('LLEN', KEYS[1]) - cap, most)
  local now = tostring(now_ms())
  for _ = 1, over do
    local id = redis.call('RPOP', KEYS[1])
    if not id then break end
    local entry = {'task_id', id, 'evicted_at', now}
    for _, v in ipairs(redis.call('HGETALL', KEYS[4] .. id)) do entry[#entry + 1] = v end
    redis.call('XADD', KEYS[2], '*', unpack(entry))
    redis.call('DEL', KEYS[4] .. id)
    evicted[#evicted + 1] = id
  end
end
local excess = redis.call('XLEN', KEYS[2]) - archive_cap
if excess > 0 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)) do
    dropped[#dropped + 1] = e[2][2]  -- task_id is always the first field
  end
  redis.call('XTRIM', KEYS[2], 'MAXLEN', archive_cap)
end
if #evicted > 0 then redis.call('HINCRBY', KEYS[3], 'dead_evicted', #evicted) end
if #dropped > 0 then redis.call('HINCRBY', KEYS[3], 'dead_archive_dropped', #dropped) end
return {evicted, dropped}
