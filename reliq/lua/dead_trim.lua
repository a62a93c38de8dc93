-- Keep the dead-letter list within its cap: the oldest dead tasks are written to the
-- archive stream and only then deleted, in this one script, so no crash can leave a
-- task neither dead-lettered nor archived. The archive keeps its own limit; what
-- falls off it is counted too.
-- KEYS[1] DEAD         dead list
-- KEYS[2] ARCHIVE      archive stream
-- KEYS[3] STATS        stats hash
-- KEYS[4] TASK         task key prefix
-- ARGV[1] cap          dead-letter cap (0 = none)
-- ARGV[2] archive_cap  archive cap
-- ARGV[3] most         most to evict this call
-- Returns {evicted ids, ids fallen off the archive}; call again while as many as
-- most were evicted.
local DEAD, ARCHIVE, STATS, TASK = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cap, archive_cap, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local evicted, dropped = {}, {}
if cap > 0 then
  local over = math.min(redis.call('LLEN', DEAD) - cap, most)
  local now = tostring(now_ms())
  for _ = 1, over do
    local id = redis.call('RPOP', DEAD)
    if not id then break end
    local entry = {'task_id', id, 'evicted_at', now}
    for _, v in ipairs(redis.call('HGETALL', TASK .. id)) do entry[#entry + 1] = v end
    redis.call('XADD', ARCHIVE, '*', unpack(entry))
    redis.call('DEL', TASK .. id)
    evicted[#evicted + 1] = id
  end
end
local excess = redis.call('XLEN', ARCHIVE) - archive_cap
if excess > 0 then
  for _, e in ipairs(redis.call('XRANGE', ARCHIVE, '-', '+', 'COUNT', excess)) do
    dropped[#dropped + 1] = e[2][2]  -- task_id is always the first field
  end
  redis.call('XTRIM', ARCHIVE, 'MAXLEN', archive_cap)
end
if #evicted > 0 then redis.call('HINCRBY', STATS, 'dead_evicted', #evicted) end
if #dropped > 0 then redis.call('HINCRBY', STATS, 'dead_archive_dropped', #dropped) end
return {evicted, dropped}
