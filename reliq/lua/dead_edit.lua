-- Change the payload of a dead task before it is requeued, recording the edit.
-- KEYS[1] TASK     the task's hash
-- ARGV[1] payload  new payload (JSON text)
-- ARGV[2] by       who edited
-- ARGV[3] most     edits kept on the record
-- Returns 1 when edited, 0 when the task is not dead (requeued, deleted, never existed).
-- The record's 'edits' field is a JSON array of {at (ms), by, previous_payload (JSON
-- text)}, newest last: keeping the previous payload lets an operator undo a bad edit.
local TASK = KEYS[1]
local payload, by, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', TASK, 'state') ~= 'dead' then return 0 end
local f = redis.call('HMGET', TASK, 'payload', 'edits', 'body')
local previous, opts = f[1] or 'null', nil
if f[3] then  -- a record of format 2 (reliq/formats.py: RecordFormat): the payload ends its body
  opts, previous = split_body(f[3])
end
local edits = f[2] and cjson.decode(f[2]) or {}
edits[#edits + 1] = {at = now_ms(), by = by, previous_payload = previous}
local kept = {}
for i = math.max(1, #edits - most + 1), #edits do kept[#kept + 1] = edits[i] end
if opts then
  redis.call('HSET', TASK, 'body', make_body(opts, payload), 'edits', cjson.encode(kept))
else
  redis.call('HSET', TASK, 'payload', payload, 'edits', cjson.encode(kept))
end
return 1
