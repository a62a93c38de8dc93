#!lua flags=no-writes
-- A window of one list or sorted set of task ids, with the fields of those that match a
-- filter: what the monitor's task listing reads (reliq/monitor/browse.py). It reads at
-- most `budget` ids a call, one HMGET each, so a call holds Redis for a bounded time
-- however long the list is: a filter over a million pending tasks is a scan that goes
-- on from call to call (a cursor), never a scan of everything at once.
-- KEYS[1] SOURCE  the list (read from the left: newest first) or sorted set (by score:
--                 soonest due first) holding the ids
-- KEYS[2] TASK    task key prefix
-- ARGV[1] kind    'list' or 'zset'
-- ARGV[2] start   the position in SOURCE to read from
-- ARGV[3] budget  the most ids to read
-- ARGV[4] limit   the most matches to return
-- ARGV[5] type    '' any, else the task type a match has
-- ARGV[6] state   '' any, else the state a match is in
-- ARGV[7] key     '' any, else the key a match has (the record's 'key')
-- ARGV[8..] fields  more record fields to return of each match
-- Returns {next, read, id, score, position, type, key, state, value of each field...,
-- id, ...}: next is
-- the position to read from next, -1 when SOURCE ended; read is how many ids were read;
-- score is '' in a list; a missing field is ''. Ids without a record (a task deleted
-- meanwhile, a wake-up token) are read, not returned.
local SOURCE, TASK = KEYS[1], KEYS[2]
local kind, start, budget, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local want_type, want_state, want_key = ARGV[5], ARGV[6], ARGV[7]
-- A record is read twice only when it matches: first the fields the filter needs (none
-- without a filter), then what a row shows.
local wanted, checks = {}, {}
if want_type ~= '' then wanted[#wanted + 1] = 'type'; checks[#checks + 1] = want_type end
if want_state ~= '' then wanted[#wanted + 1] = 'state'; checks[#checks + 1] = want_state end
if want_key ~= '' then wanted[#wanted + 1] = 'key'; checks[#checks + 1] = want_key end
local fields = {'type', 'key', 'state'}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
local function matches(key)
  if #wanted == 0 then return true end
  local f = redis.call('HMGET', key, unpack(wanted))
  for i = 1, #checks do
    if f[i] ~= checks[i] then return false end
  end
  return true
end
-- Read in slices: a page of 50 unfiltered reads about 50 ids, not the whole budget.
local SLICE = math.min(budget, #wanted > 0 and 1000 or math.max(limit * 2, 100))
local out = {0, 0}
local pos, read, found = start, 0, 0
while read < budget and found < limit do
  local n = math.min(SLICE, budget - read)
  local window
  if kind == 'zset' then
    window = redis.call('ZRANGE', SOURCE, pos, pos + n - 1, 'WITHSCORES')
  else
    window = redis.call('LRANGE', SOURCE, pos, pos + n - 1)
  end
  local step = kind == 'zset' and 2 or 1
  local got = #window / step
  local window_end = pos + got
  for i = 1, #window, step do
    local id = window[i]
    read = read + 1
    pos = pos + 1
    local key = TASK .. id
    local f = matches(key) and redis.call('HMGET', key, unpack(fields))
    if f and f[1] then  -- no type: no record
      out[#out + 1] = id
      out[#out + 1] = step == 2 and window[i + 1] or ''
      out[#out + 1] = pos - 1
      for j = 1, #fields do out[#out + 1] = f[j] or '' end
      found = found + 1
      if found == limit then break end
    end
  end
  if got < n and pos == window_end then
    pos = -1  -- read to the end: nothing more
    break
  end
end
-- Read exactly to the end: say so now, rather than with an empty page next.
if pos >= 0 and (kind == 'zset' and redis.call('ZCARD', SOURCE) or redis.call('LLEN', SOURCE)) <= pos then
  pos = -1
end
out[1], out[2] = pos, read
return out
