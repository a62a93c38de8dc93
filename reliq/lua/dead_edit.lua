-- Change the payload of a dead task before it is requeued, recording the edit.
-- KEYS[1] the task's hash
-- ARGV[1] new payload (JSON text)  ARGV[2] who edited  ARGV[3] edits kept on the record
-- Returns 1 when edited, 0 when the task is not dead (requeued, deleted, never existed).
-- The record's 'edits' field is a JSON array of {at (ms), by, previous_payload (JSON
-- text)}, newest last: keeping the previous payload lets an operator undo a bad edit.
if redis.call('HGET', KEYS[1], 'state') ~= 'dead' then return 0 end
local f = redis.call('HMGET', KEYS[1], 'payload', 'edits')
local edits = f[2] and cjson.decode(f[2]) or {}
edits[#edits + 1] = {at = now_ms(), by = ARGV[2], previous_payload = f[1] or 'null'}
local kept = {}
for i = math.max(1, #edits - tonumber(ARGV[3]) + 1), #edits do kept[#kept + 1] = edits[i] end
redis.call('HSET', KEYS[1], 'payload', ARGV[1], 'edits', cjson.encode(kept))
return 1
