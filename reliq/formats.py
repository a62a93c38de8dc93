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

from enum import StrEnum

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

#: What snapshot.lua returns first, in this order; field, value pairs of the stats hash
#: follow. Times are ms on the Redis clock; an oldest time is -1 when there is none;
#: ``pauses`` is {field, value, held, ...} of the paused hash (reliq/pausing.py).
SNAPSHOT_FIELDS = ("now_ms", "pending_count", "delayed_count", "dead_count", "worker_count", "processing_count",
                   "oldest_queued_ms", "oldest_dead_ms", "archive_count", "held_count", "pauses")


class Metric(StrEnum):
    """The kinds of field in a queue's metrics hash: a field is the kind and its parts, joined by ``|``.

    settle.lua and ``Queue.settle`` write the task kinds, the heartbeat the loop-block kinds
    (reliq/loopwatch.py); reliq/monitor/metrics.py reads them all (:func:`split_metric`).
    Lua names them ``METRIC_RUNS`` and so on (``--- @format METRIC``).
    """

    #: ``t|type|outcome``: runs settled.
    RUNS = "t"
    #: ``w|type|bucket``: runs whose wait (queued to started) fell in the histogram bucket.
    WAIT = "w"
    #: ``ws|type``: the sum of their waits (ms).
    WAIT_SUM = "ws"
    #: ``r|type|bucket``: runs whose run time fell in the bucket.
    RUN = "r"
    #: ``rs|type``: the sum of their run times (ms).
    RUN_SUM = "rs"
    #: ``lb|bucket``: the workers' event-loop blocks past the warning threshold, by length.
    BLOCKS = "lb"
    #: ``lbs``: the sum of their lengths (ms).
    BLOCKED_SUM = "lbs"


#: What joins the parts of a metrics-hash field.
SEP = "|"


def metric(kind: Metric, *parts: object) -> str:
    """A metrics-hash field: ``kind|part|part...`` (see :class:`Metric` for each kind's parts)."""
    return SEP.join((kind, *map(str, parts)))


def split_metric(field: str) -> tuple[str, str, str]:
    """A metrics-hash field as (kind, task type, last part), "" for a part its kind has not.

    A task type may hold ``|``: it is everything between the first and the last one.
    """
    kind, _, rest = field.partition(SEP)
    if kind in (Metric.WAIT_SUM, Metric.RUN_SUM):
        return kind, rest, ""
    if kind in (Metric.BLOCKS, Metric.BLOCKED_SUM):
        return kind, "", rest
    task_type, _, last = rest.rpartition(SEP)
    return kind, task_type, last


#: Every format a script can take with ``--- @format NAME``: positions (a tuple of field
#: names) or constants (a StrEnum, whose members become ``NAME_MEMBER``).
LUA: dict[str, tuple[str, ...] | type[StrEnum]] = {
    "CLAIM_FIELDS": CLAIM_FIELDS,
    "ENQUEUE_FIELDS": ENQUEUE_FIELDS,
    "SETTLE_FIELDS": SETTLE_FIELDS,
    "SNAPSHOT_FIELDS": SNAPSHOT_FIELDS,
    "METRIC": Metric,
}


def lua_locals(name: str, listed: bool = True) -> str:
    """The Lua locals that stand for format ``name``.

    For positions: the list (unless not ``listed``) and each field's position; for
    constants: each member's value.
    """
    spec = LUA[name]
    if not isinstance(spec, tuple):
        return f"local {', '.join(f'{name}_{m.name}' for m in spec)} = {', '.join(repr(m.value) for m in spec)}\n"
    names = ", ".join(f.upper() for f in spec)
    positions = ", ".join(str(i) for i in range(1, len(spec) + 1))
    the_list = f"local {name} = {{{', '.join(repr(f) for f in spec)}}}\n" if listed else ""
    return f"{the_list}local {names} = {positions}\n"
