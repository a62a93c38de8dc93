#!lua flags=allow-oom
-- Write the enqueue defaults the task types of a starting worker declare (reliq/type_defaults.py).
-- allow-oom: a worker started on a full Redis must get past this to drain the queue; the
-- hash holds one small entry a type.
-- KEYS[1] TYPES    types hash: type -> JSON of its defaults
-- ARGV    type, entry, type, entry, ..., '', type, type, ...: the entries to set, then
--         after the empty separator the types to take out
local TYPES = KEYS[1]
local i = 1
while i <= #ARGV and ARGV[i] ~= '' do
  redis.call('HSET', TYPES, ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('HDEL', TYPES, ARGV[j]) end
return 0
