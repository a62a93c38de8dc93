"""The formats that cross between Python and the Lua scripts, each defined here once.

Positions: an ordered tuple of field names (a reply, or a batch argument). Python reads
and writes it by the tuple; a script takes it with a ``--- @format NAME`` line, which
:mod:`reliq.scripts` replaces at load time with Lua locals generated from the tuple:
the list itself and each field's position, named in capitals. For :data:`CLAIM_FIELDS`::

    local CLAIM_FIELDS = {'type', 'payload', ...}
    local TYPE, ATTEMPTS, CRASHES = 1, 3, 6

so claim.lua reads ``f[CRASHES]``, never ``f[6]``, and a field added here reaches both
sides at once. Constants: an enum (the metrics hash's field kinds, the scripts' return
codes), whose members a script gets as ``NAME_MEMBER``. Only the names a script's code
reads are written into it, and locals cost it nothing a call (cheaper to read than the
globals ``KEYS``/``ARGV`` they replace). The task states, run outcomes and dead reasons
the scripts spell as literals are enums here too; tests/test_formats.py checks the
scripts name no other.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from enum import Enum, IntEnum, StrEnum
from functools import lru_cache

#: What claim.lua reads of each task it claims: the fields up to ``state`` with one HMGET,
#: ``failures`` and ``crashes`` with another only when ``attempts`` > 0 (a task never claimed
#: has neither); ``key`` is not read (the claim knows it). ``attempts``, ``failures`` and
#: ``crashes`` are absent while 0 in a record of format 2 (:class:`RecordFormat`).
CLAIM_FIELDS = ("type", "body", "attempts", "queued_at", "state", "failures", "crashes", "key")
#: Values before the first task in claim.lua's reply: code, now_ms, wait_ms.
CLAIM_HEAD = 3
#: How claim.lua's reply gives each task it claims: one string (each value of a script's
#: reply costs ~1,000 instructions, callgrind; a piece of a string it builds ~300): these
#: joined by SEP (``record`` is '1' for a record of format 1, '' for format 2; a count ''
#: while 0), then SEP, then the type and the key each as ``<length>|<text>`` (either may
#: hold SEP), then the body (:func:`make_body`). :func:`split_claimed` reads it.
CLAIMED = ("id", "attempts", "queued_at", "failures", "crashes", "record")


def split_claimed(raw: bytes) -> tuple[bytes, ...]:
    """A task of claim.lua's reply as (CLAIMED..., type, key, body)."""
    *head, rest = raw.split(_SEP, len(CLAIMED))
    ttype, rest = _counted(rest, _SEP)
    if rest.startswith(_NO_KEY):  # most tasks: no key to cut out
        return (*head, ttype, b"", rest[len(_NO_KEY):])
    key, body = _counted(rest, _SEP)
    return (*head, ttype, key, body)


def _counted(raw: bytes, sep: bytes) -> tuple[bytes, bytes]:
    """``<n><sep><n bytes><the rest>`` as (the n bytes, the rest): a length-prefixed piece (a
    claimed task's type and key, a body's opts), which may hold any byte."""
    n, _, rest = raw.partition(sep)
    end = int(n)
    return rest[:end], rest[end:]


class RecordFormat(IntEnum):
    """How a task's record holds what nothing changes after its enqueue (docs/architecture.md:
    "Record formats across an upgrade"). A queue's producers write one (keys.format)."""

    #: ``payload``, ``opts`` and ``max_retries`` as fields of their own, and ``attempts``,
    #: ``failures``, ``crashes`` written as '0' at the enqueue: what workers of the versions
    #: before format 2 read.
    FIELDS = 1
    #: One field ``body`` (:func:`make_body`), and the three counters absent until they
    #: change; a task enqueued with nothing but its type, payload, timeout and retries has no
    #: ``enqueued_at`` until it is queued again (its ``queued_at`` is that time): a task's life
    #: costs Redis ~60,000 instructions less (bench/instructions.py).
    BODY = 2

#: A task record's field ``opts``: what only the claim reads of a task and nothing changes,
#: these values joined by :data:`SEP`, written once by enqueue.lua: ``max_retries`` (as
#: resolved: the task's, its type's default or the queue's), ``timeout_ms`` ('' = the type's
#: default), ``trace`` ('' = none), ``unique`` (the lock's name, '' = not unique; last, as
#: it may hold the separator). The producer sends the middle (:func:`opts_prefix`), the
#: script puts the retries before and the lock's name after. The claim reads and returns
#: one value where it read four fields (two of them usually absent, which costs a listpack
#: read all the same: callgrind). ``max_retries`` and ``unique`` stay fields of their own
#: too: what the monitor, the scripts ending a task and workers of the version before opts
#: read. A record written before opts has the four fields alone; the claim gives it its
#: opts (claim.lua: opts_of).
OPTS_FIELDS = ("max_retries", "timeout_ms", "trace", "unique")


def opts_prefix(max_retries: int, timeout_ms: int | None, trace: str) -> str:
    """What the producer sends of a task's ``opts``: ``max_retries|timeout_ms|trace|`` (enqueue.lua completes it)."""
    return f"{max_retries}{SEP}{timeout_ms or ''}{SEP}{trace}{SEP}"


@lru_cache(maxsize=4096)
def split_opts(opts: bytes) -> tuple[int, int | None, str, str]:
    """A record's ``opts`` as (max_retries, timeout_ms or None, trace, unique lock's name).

    Cached: the worker splits a claimed task's opts, and most tasks of a queue share theirs
    (a dict lookup instead of a decode, a split and two ints: ~0.2 us a task).
    """
    retries, timeout, trace, unique = opts.decode().split(SEP, 3)
    return int(retries), int(timeout) if timeout else None, trace, unique


#: A record's field ``body`` (format 2), written once at the enqueue: ``<n>:<opts><payload>``,
#: ``n`` the length of ``opts`` in bytes, in decimal. The opts first: the lock's name at its
#: end may hold the separator, and a payload anything. ``''`` once the task succeeded (its
#: payload is dropped; the same HSET that marks it succeeded blanks it).
def make_body(opts: str, payload: bytes) -> bytes:
    """The ``body`` of a task of ``opts`` (:data:`OPTS_FIELDS` joined) and ``payload`` (JSON)."""
    raw = opts.encode()
    return b"%d:%b%b" % (len(raw), raw, payload)


def payload_of(record: Mapping[str, bytes | None]) -> tuple[bytes | None, int | None]:
    """The (payload, max_retries) of a record's fields as read (either format; None: none, or dropped)."""
    body = record.get("body")
    if body:
        payload, retries, *_ = split_body(body)
        return payload or None, retries
    return record.get("payload") or None, retries_of(record)


def retries_of(record: Mapping[str, str | bytes | None]) -> int | None:
    """The max_retries of a record's fields as read, text or bytes, of either format (None: not known)."""
    body = record.get("body")
    if body:
        return split_body(body.encode() if isinstance(body, str) else body)[1]
    retries = record.get("max_retries")
    return int(retries) if retries else None


def as_format_1(record: dict[str, str]) -> dict[str, str]:
    """A record's fields (text) as format 1 spells them: a body becomes payload, opts and max_retries.

    What an export file holds (reliq/monitor/dlq_io.py), whichever format the record was of.
    """
    body = record.pop("body", None)
    if body:
        opts, payload = _body_parts(body.encode())
        record.update(payload=payload.decode(), opts=opts.decode(), max_retries=opts.split(_SEP, 1)[0].decode())
    return record


def _body_parts(body: bytes) -> tuple[bytes, bytes]:
    """A body's (opts, payload)."""
    return _counted(body, b":")


def split_body(body: bytes) -> tuple[bytes, int, int | None, str, str]:
    """A record's ``body`` as (payload, max_retries, timeout_ms or None, trace, unique lock's name)."""
    opts, payload = _body_parts(body)
    return (payload, *split_opts(opts))


class TaskState(StrEnum):
    """The ``state`` field of a task's hash, which the scripts write (tests/test_formats.py
    checks every state they name is one of these)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    PROCESSING = "processing"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


#: States a task ends in: a waiter (:mod:`reliq.waiting`) returns once the task is in one.
END_STATES = (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED)
#: States a task is cancelled in at once (cancel.lua): it has not started. A running one
#: (processing) is cancelled by its worker, asked by cancel.lua (docs/cancel.md).
CANCELLABLE = (TaskState.PENDING, TaskState.SCHEDULED, TaskState.RETRYING)


class CancelMode(StrEnum):
    """How a cancelled task's record ends (cancel.lua's ARGV, a running task's ``cancel`` field)."""

    #: It stays, state cancelled, for the result TTL (POST /task/{id}/cancel).
    KEEP = "keep"
    #: It goes at once with its idempotency key (HTTP DELETE).
    FORGET = "forget"


class RunOutcome(StrEnum):
    """What became of one run of a task, as the worker hands it to settle.lua."""

    #: The handler returned: the task succeeded.
    OK = "ok"
    #: The handler raised: retried while its retries last, then dead.
    ERROR = "error"
    #: The handler ran past its timeout: as ERROR.
    TIMEOUT = "timeout"
    #: The handler raised PermanentError (or an error its policy gives up on): dead at once.
    PERMANENT = "permanent"
    #: No handler for the task's type: dead at once.
    UNKNOWN_TYPE = "unknown_type"
    #: The worker stopped the handler on a cancel request (docs/cancel.md): cancelled, never retried.
    CANCELLED = "cancelled"
    #: The handler raised reliq.Snooze: scheduled again, no failure counted.
    SNOOZE = "snooze"
    #: The handler raised reliq.RateLimited: back to pending, no failure counted, its type
    #: or key held (docs/flow-control.md).
    RATE_LIMITED = "rate_limited"


class DeadReason(StrEnum):
    """Why a task is dead (the ``reason`` field of its hash)."""

    ERROR = "error"
    TIMEOUT = "timeout"
    #: Its worker died running it too often (reap.lua's crash quarantine).
    CRASHED = "crashed"
    UNKNOWN_TYPE = "unknown_type"
    PERMANENT = "permanent"


#: The fields of one entry of a task's run history (its record's field ``runs``: a JSON
#: array of objects with these keys, oldest first; _lib.lua: note_run). Every run that does
#: not succeed adds one: ``attempt`` (the attempt that ran; 0 when none was counted), ``at``
#: (ms, the Redis clock, as a string), ``worker``, ``outcome`` (a :class:`RunOutcome` other
#: than ``ok``, or ``crashed``: its worker died running it), ``error`` (cut at
#: ``RUNS_ERROR_MAX`` bytes) and ``state`` (the state the run left the task in).
RUN_FIELDS = ("attempt", "at", "worker", "outcome", "error", "state")


class Runs(IntEnum):
    """Bounds of a task's run history (Lua: ``RUNS_KEPT``, ``RUNS_ERROR_MAX``)."""

    #: Entries a record keeps: the last ones.
    KEPT = 10
    #: Bytes of an error an entry keeps (last_error keeps it whole).
    ERROR_MAX = 2000


class Code(IntEnum):
    """What a script says of its call, where it can say more than one thing: its reply's first value.

    Lua names them ``CODE_OK`` and so on (``--- @format CODE``). The negative ones are
    refusals, each an exception of :mod:`reliq.errors` (``script_error``).
    """

    OK = 0
    #: claim.lua: the next task is a crash suspect and the worker holds others: it waits
    #: to run alone (what else was claimed is in the reply).
    SUSPECT_WAITS = 1
    #: claim.lua: the whole queue is paused; nothing was claimed.
    PAUSED = 2
    #: reap.lua: the worker beat within its lease after all; nothing was reaped.
    ALIVE = 3
    #: cancel.lua: the task runs; its worker was asked to stop it (docs/cancel.md).
    CANCELLING = 4
    #: pause.lua, schedule_pause.lua, resume.lua: it was so already (paused, or not
    #: paused); nothing changed. resume.lua answers PAUSED when the type was paused again
    #: while its held tasks went back (those left stay held).
    ALREADY = 5
    #: enqueue.lua: pending holds the admission limit already (the reply's next value says
    #: how many); nothing was written. QueueFull.
    QUEUE_FULL = -1
    #: cancel.lua: there is no record of the task. TaskNotFound.
    NO_TASK = -2
    #: cancel.lua: the task has ended (its state follows). CancelRefused.
    NOT_CANCELLABLE = -3
    #: schedule_pause.lua: there is no such schedule. ScheduleNotFound.
    NO_SCHEDULE = -4


class Enqueued(IntEnum):
    """What enqueue.lua did with each task of a call (its reply's value after the task's id).

    The id is the task's that stands for it either way. Lua names them ``ENQUEUED_CREATED``
    and so on (``--- @format ENQUEUED``).
    """

    #: An earlier request with the same idempotency key created it.
    REPEATED = 0
    #: Created now.
    CREATED = 1
    #: A live task of the same type and unique key stands for it (pending, scheduled, retrying, running).
    EXISTING = 2


#: A task as enqueue.lua takes it in its ARGV[2] (reliq/calls.py: enqueue_batch): one flat
#: JSON array, these values a task one after another, every value a string (an array a
#: task cost the script's cjson twice as much; each value ~550 instructions, callgrind).
#: ``body`` is the record's (:func:`make_body`), its opts ``max_retries|timeout_ms|trace|``
#: with the task's max_retries or, when it gives none, the queue's (the script puts the
#: type's default in, and the unique lock's name after). ``rest`` is '' for a task that
#: sets nothing else (the plain path: the script writes its record as it comes), else a
#: JSON array of :data:`ENQUEUE_REST`.
ENQUEUE_FIELDS = ("id", "type", "body", "rest")
#: What a task sets beyond ENQUEUE_FIELDS: ``retries`` '1' when it gives max_retries (else
#: its type's default, if any, wins over the queue's), ``priority`` '' for the default,
#: ``key`` '' for none, ``unique`` as :class:`Unique`; numbers as strings.
ENQUEUE_REST = ("retries", "delay_ms", "idempotency_key", "run_at_ms", "unique", "key", "priority")

#: A task's outcome as settle.lua takes it in its ARGV[2] (reliq/queue.py: Queue.settle):
#: one flat JSON array, these values a task one after another. ``more`` holds, joined by
#: SEP, :data:`SETTLE_MORE`: what only a failure (or a stale outcome) needs, read then
#: alone, so that a success decodes 8 values, not 13 (~3,000 instructions, callgrind).
#: ``record`` is ``s`` when the record is of format 2 and the worker knows it is a
#: listpack (every value it has seen at most :data:`LISTPACK_VALUE` bytes, no failure,
#: crash or progress: see :func:`reliq.queue.known_small`), ``2`` for format 2 when only
#: Redis can tell (``OBJECT ENCODING``), ``1`` for a record of format 1.
SETTLE_FIELDS = ("id", "type", "text", "more", "outcome", "unique", "key", "record")
#: A plain success (settle.lua's ARGV[7]: outcome ok, record 's', no unique lock, key or
#: progress): the first four of SETTLE_FIELDS alone.
SETTLE_OK = SETTLE_FIELDS[:4]
SETTLE_MORE = ("max_retries", "retry_delay_ms", "wait_ms", "run_ms", "wait_bucket", "run_bucket")
#: Redis's default hash-max-listpack-value: a hash that ever held a longer value is a hash table.
LISTPACK_VALUE = 64

#: What snapshot.lua returns first, in this order; field, value pairs of the stats hash
#: follow. Times are ms on the Redis clock; an oldest time is -1 when there is none;
#: ``pauses`` is {field, value, held, ...} of the paused hash (reliq/pausing.py);
#: ``pending_by_priority`` the pending tasks of each priority, 9 first (reliq/priorities.py);
#: ``limited_count`` those set aside for a token, ``keyed_count`` those in keys' lists
#: (docs/flow-control.md; both counted in ``pending_count`` too).
SNAPSHOT_FIELDS = ("now_ms", "pending_count", "delayed_count", "dead_count", "worker_count", "processing_count",
                   "oldest_queued_ms", "oldest_dead_ms", "archive_count", "held_count", "pauses",
                   "pending_by_priority", "limited_count", "keyed_count")


#: What joins the parts of a compound value: a metrics-hash field, a limits-hash value, a
#: pause, a schedule's pause (Lua: ``SEP``). Not a magic character of Lua patterns, so a
#: pattern may spell it as itself (:data:`LIMIT_PATTERN`).
SEP = "|"
_SEP = SEP.encode()
_NO_KEY = b"0" + _SEP  # a key of length 0 in claim.lua's reply (CLAIMED)

#: A type's value in the limits hash (limit.lua writes it, claim.lua and settle.lua read it):
#: these integers joined by :data:`SEP`, 0 for none; ``ordered`` 1 or 0. The sources it is
#: merged from are JSON in the limit sources hash (reliq/limits.py).
LIMIT_FIELDS = ("rate_count", "rate_period_ms", "rate_burst", "key_concurrency", "ordered")
#: What limit.lua formats a value with, and the Lua pattern claim.lua and settle.lua match it with.
LIMIT_FORMAT = SEP.join(["%d"] * len(LIMIT_FIELDS))
LIMIT_PATTERN = "^" + SEP.join(["(%d+)"] * len(LIMIT_FIELDS))


class PauseState(StrEnum):
    """The first part of a value of the paused hash: ``state|since_ms|by`` (reliq/pausing.py).

    pause.lua writes PAUSED; resume.lua RESUMING while a type's held tasks go back, during
    which claims take the type as usual. claim.lua tells them apart by their first letter.
    """

    PAUSED = "paused"
    RESUMING = "resuming"


#: The paused hash's field of the whole queue (any other names a task type).
WHOLE_QUEUE = "*"
#: What pause.lua and resume.lua look for at the start of a paused hash value.
PAUSED_MARK = PauseState.PAUSED.value + SEP
RESUMING_MARK = PauseState.RESUMING.value + SEP

#: What a script pushes to an empty ``pending`` to wake a blocked worker for a task of
#: another priority or key (reliq/priorities.py): no task id looks like it (ids are 26
#: Crockford base32 characters); a claim drops it like any id without a record.
WAKE_MARK = "~wake"


class Unique(StrEnum):
    """How enqueue.lua takes a task's uniqueness (its ENQUEUE_FIELDS ``unique``; reliq/calls.py)."""

    #: The type's default (``type_unique``).
    TYPE_DEFAULT = ""
    #: Not unique.
    NO = "-"
    #: Unique by the default key: a SHA1 of the payload as stored.
    PAYLOAD = "#"
    #: Followed by the producer's own key.
    KEY = "="


class GroupField(StrEnum):
    """The fields of a queue's groups hash (keys of tasks, docs/flow-control.md; _lib.lua).

    The first three are prefixes of a key's gid; the last three counts of the whole queue.
    Python reads them for the keys' view (``Queue.group_counts``); tests/test_formats.py
    checks the scripts spell no other.
    """

    #: ``a:<gid>``: the key's slots taken.
    SLOTS = "a:"
    #: ``q:<gid>``: the key has a marker (on the ring, or set aside as ``@<gid>``).
    MARKER = "q:"
    #: ``h:<gid>``: when the key's hold ends (ms).
    HOLD = "h:"
    #: Ids waiting in keys' lists.
    READY = "ready"
    #: Markers set aside in limited lists, waiting for a token.
    ASIDE = "aside"
    #: Markers in held lists (their type is paused).
    PAUSED = "paused"


class ScheduleSource(StrEnum):
    """Who defined a periodic schedule (its hash's ``source``; schedule_put.lua)."""

    #: At run time (PUT /schedules, reliq schedule add): always written, and wins over code.
    API = "api"
    #: A worker's --app modules: written unless a run-time definition holds the name.
    CODE = "code"


class Put(StrEnum):
    """What schedule_put.lua did with a definition (Lua: ``PUT_CREATED`` and so on)."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    #: Code met a run-time definition that differs from it, and left it as it is.
    KEPT = "kept"


class Fire(StrEnum):
    """What schedule_fire.lua did with a decision (Lua: ``FIRE_OK`` and so on).

    OK: recorded. Any other: nothing written.
    """

    OK = "ok"
    #: No such schedule.
    GONE = "gone"
    PAUSED = "paused"
    #: Defined again since the read.
    CHANGED = "changed"
    #: An earlier decision's tasks are not all in yet.
    BUSY = "busy"
    #: Another worker decided from this cursor first.
    RACED = "raced"
    #: A slot or the new cursor lies beyond the Redis clock, or at or before the cursor.
    EARLY = "early"


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


#: Kinds whose field is the kind and a task type; kinds with no task type.
_TYPE_ONLY = (Metric.WAIT_SUM, Metric.RUN_SUM)
_NO_TYPE = (Metric.BLOCKS, Metric.BLOCKED_SUM)


def metric(kind: Metric, *parts: object) -> str:
    """A metrics-hash field: ``kind|part|part...`` (see :class:`Metric` for each kind's parts)."""
    return SEP.join((kind, *map(str, parts)))


def split_metric(field: str) -> tuple[str, str, str]:
    """A metrics-hash field as (kind, task type, last part), "" for a part its kind has not.

    A task type may hold ``|``: it is everything between the first and the last one.
    """
    kind, _, rest = field.partition(SEP)
    if kind in _TYPE_ONLY:
        return kind, rest, ""
    if kind in _NO_TYPE:
        return kind, "", rest
    task_type, _, last = rest.rpartition(SEP)
    return kind, task_type, last


#: Every format a script can take with ``--- @format NAME``: positions (a tuple of field
#: names), constants (an enum, whose members become ``NAME_MEMBER``), one string (a local
#: ``NAME``) or a set of strings (a table ``NAME`` with each as a key, true).
LUA: dict[str, tuple[str, ...] | type[Enum] | str | frozenset[str]] = {
    "CLAIM_FIELDS": CLAIM_FIELDS,
    "OPTS_FIELDS": OPTS_FIELDS,
    "ENQUEUE_FIELDS": ENQUEUE_FIELDS,
    "SETTLE_FIELDS": SETTLE_FIELDS,
    "SETTLE_MORE": SETTLE_MORE,
    "ENQUEUE_REST": ENQUEUE_REST,
    "SNAPSHOT_FIELDS": SNAPSHOT_FIELDS,
    "METRIC": Metric,
    "CODE": Code,
    "ENQUEUED": Enqueued,
    "SEP": SEP,
    "LIMIT_FIELDS": LIMIT_FIELDS,
    "LIMIT_FORMAT": LIMIT_FORMAT,
    "LIMIT_PATTERN": LIMIT_PATTERN,
    "WHOLE_QUEUE": WHOLE_QUEUE,
    "PAUSED_MARK": PAUSED_MARK,
    "RESUMING_MARK": RESUMING_MARK,
    "WAKE_MARK": WAKE_MARK,
    "END_STATES": frozenset(END_STATES),
    "CANCEL": CancelMode,
    "UNIQUE": Unique,
    "SOURCE": ScheduleSource,
    "PUT": Put,
    "FIRE": Fire,
    "RUNS": Runs,
    "RECORD": RecordFormat,
}


def lua_locals(name: str, wanted: Container[str] | None = None) -> str:
    """The Lua locals that stand for format ``name``, those in ``wanted`` alone if given.

    For positions: the list, named ``name``, and each field's position; for constants:
    ``name_MEMBER`` and its value; for a string, ``name`` and it; for a set, ``name`` the
    table of its members.
    """
    spec = LUA[name]
    if isinstance(spec, str | frozenset):
        if wanted is not None and name not in wanted:
            return ""
        if isinstance(spec, str):
            return f"local {name} = {_lua_string(spec)}\n"
        return f"local {name} = {{{', '.join(f'[{_lua_string(m)}] = true' for m in sorted(spec))}}}\n"
    if isinstance(spec, tuple):
        pairs = [(f.upper(), str(i)) for i, f in enumerate(spec, start=1)]
        listed = wanted is None or name in wanted
        head = f"local {name} = {{{', '.join(repr(f) for f in spec)}}}\n" if listed else ""
    else:
        pairs = [(f"{name}_{m.name}", _lua_string(m.value) if isinstance(m.value, str) else repr(m.value))
                 for m in spec]
        head = ""
    pairs = [(n, v) for n, v in pairs if wanted is None or n in wanted]
    if not pairs:
        return head
    return f"{head}local {', '.join(n for n, _ in pairs)} = {', '.join(v for _, v in pairs)}\n"


def _lua_string(value: str) -> str:
    """``value`` as a Lua string literal (formats spell no quote, backslash or line break)."""
    if any(c in value for c in "'\\\n"):
        raise ValueError(f"{value!r} cannot be written into Lua as it is")
    return f"'{value}'"
