"""The formats that cross between Python and the Lua scripts, each defined here once.

A format is an ordered tuple of field names. Python reads and writes it by these tuples;
a script takes it with a ``--- @format NAME`` line, which :mod:`reliq.scripts` replaces
at load time with Lua locals generated from the tuple: the list itself, and each
field's position by its name in capitals. For :data:`CLAIM_FIELDS`::

    local CLAIM_FIELDS = {'type', 'payload', ...}
    local TYPE, PAYLOAD, ... = 1, 2, ...

so claim.lua reads ``f[CRASHES]``, never ``f[6]``, and a field added here reaches both
sides at once. Locals cost the scripts nothing a call (the positions are constants; a
local is cheaper to read than a global).
"""

from __future__ import annotations

#: What claim.lua returns for each task it claims, after the task's id and in this order:
#: these fields of the task's hash, read with one HMGET. The whole reply is
#: ``{code, now_ms, id, <CLAIM_FIELDS>, id, <CLAIM_FIELDS>, ...}``.
CLAIM_FIELDS = ("type", "payload", "attempts", "failures", "max_retries", "crashes", "timeout_ms", "queued_at",
                "trace")
#: Values a claimed task takes in claim.lua's reply: its id, then :data:`CLAIM_FIELDS`.
CLAIM_WIDTH = 1 + len(CLAIM_FIELDS)

#: A task as enqueue.lua takes it, one JSON array of these a task in its ARGV[2]
#: (reliq/calls.py: enqueue_batch), every value a string.
ENQUEUE_FIELDS = ("id", "type", "payload", "max_retries", "timeout_ms", "delay_ms", "idempotency_key", "run_at_ms",
                  "trace")

#: A task's outcome as settle.lua takes it, one JSON array of these a task in its ARGV[2]
#: (reliq/queue.py: Queue.settle).
SETTLE_FIELDS = ("id", "type", "max_retries", "outcome", "text", "retry_delay_ms", "wait_ms", "run_ms", "wait_bucket",
                 "run_bucket")

#: Every format a script can take with ``--- @format NAME``.
LUA: dict[str, tuple[str, ...]] = {
    "CLAIM_FIELDS": CLAIM_FIELDS,
    "ENQUEUE_FIELDS": ENQUEUE_FIELDS,
    "SETTLE_FIELDS": SETTLE_FIELDS,
}


def lua_locals(name: str, listed: bool = True) -> str:
    """The Lua locals that stand for format ``name``: the list (unless not ``listed``), each field's position."""
    fields = LUA[name]
    names = ", ".join(f.upper() for f in fields)
    positions = ", ".join(str(i) for i in range(1, len(fields) + 1))
    the_list = f"local {name} = {{{', '.join(repr(f) for f in fields)}}}\n" if listed else ""
    return f"{the_list}local {names} = {positions}\n"
