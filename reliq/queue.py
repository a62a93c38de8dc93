"""The queue core: every state transition of a task, each one Lua script call.

Producers, workers, the API and the monitor all go through ``Queue`` (blocking
producers through its twin, :class:`reliq.syncqueue.SyncQueue`); none of them touches
Redis keys directly, and ``tests/test_layout.py`` keeps it so.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from reliq import calls, partitions, pausing, priorities, tracing
from reliq.calls import text as text  # re-exported: most of reliq reads replies through reliq.queue
from reliq.errors import InvalidTask, NotReplicated, RedisFull, TaskNotFound, script_error
from reliq.formats import (
    CLAIM_HEAD,
    CLAIM_WIDTH,
    LISTPACK_VALUE,
    SEP,
    SNAPSHOT_FIELDS,
    Code,
    Enqueued,
    Fire,
    GroupField,
    Metric,
    Put,
    RunOutcome,
    ScheduleSource,
    TaskState,
    split_opts,
)
from reliq.formats import END_STATES as END_STATES  # re-exported: the waiters read it here
from reliq.histogram import bucket
from reliq.ids import new_id
from reliq.keys import QueueKeys, group_id
from reliq.limits import Layer, LimitView, check_key, check_ordered, merged
from reliq.limits import view as limit_view
from reliq.memory import TASK_BYTES, guard
from reliq.partitions import PartitionMap
from reliq.pausing import PauseView
from reliq.scripts import Scripts
from reliq.settings import WHITESPACE, Retention, Settings

if TYPE_CHECKING:
    from reliq.schedules import Plan, Schedule

#: Bounds on what a producer may ask for, so one bad request cannot park a task forever.
MAX_TYPE_LEN = 200
MAX_RETRIES_LIMIT = 100
MAX_DELAY_S = 366 * 24 * 3600.0
MAX_TIMEOUT_S = 24 * 3600.0
MAX_UNIQUE_KEY = 200

#: States a task record can be in (the ``state`` field of GET /task/{id}).
STATES = tuple(TaskState)
#: Counters kept in the stats hash (reported as 0 until first incremented).
#: refused_memory: tasks refused because Redis was (nearly) out of memory (reliq/memory.py).
#: trimmed / expired: succeeded records deleted past their retention's count / age (settle.lua).
#: snoozed: runs that raised reliq.Snooze (not failures; their attempt is given back).
#: rate_limited: runs that raised reliq.RateLimited: back to pending, attempt given back (settle.lua).
#: schedule_enqueued / schedule_skipped: periodic slots enqueued, and missed ones skipped (reliq/schedules.py).
#: cancelled: tasks that ended cancelled, before they started or while they ran;
#: cancelled_running: those of them that were running (stopped by their worker, docs/cancel.md).
COUNTERS = ("enqueued", "succeeded", "failed", "retried", "dead", "recovered", "requeued", "cancelled",
            "cancelled_running", "dead_evicted", "dead_archive_dropped", "dead_imported", "refused_memory",
            "trimmed", "expired", "snoozed", "schedule_enqueued", "schedule_skipped", "unique_hits", "rate_limited")
#: Payload edits a dead task's record keeps (each with the payload it replaced).
EDITS_KEPT = 10


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated task, ready to enqueue. Build it with :func:`make_spec`."""

    type: str
    payload: bytes
    #: None: the type's default (reliq/type_defaults.py), else the queue's, applied by enqueue.lua.
    max_retries: int | None
    timeout_ms: int | None
    delay_ms: int
    idempotency_key: str
    id: str
    run_at_ms: int = 0
    #: W3C traceparent of where it was enqueued ("" = none): the worker's spans are its children.
    trace: str = ""
    #: Unique while alive: True, False, or None for the type's default (reliq/type_defaults.py).
    unique: bool | None = None
    #: The key of a unique task ("" = a hash of its payload); given, it makes the task unique.
    unique_key: str = ""
    #: 0 (lowest) to 9 (highest); see reliq/priorities.py.
    priority: int = priorities.DEFAULT
    #: The task's key ("" = none): its type's key concurrency and turns apply (docs/flow-control.md).
    key: str = ""


def make_spec(
    type: Any,
    payload: Any = None,
    *,
    max_retries: Any = None,
    timeout: Any = None,
    delay: Any = None,
    run_at: Any = None,
    idempotency_key: Any = None,
    priority: Any = None,
    unique: Any = None,
    unique_key: Any = None,
    key: Any = None,
    trace: str = "",
) -> TaskSpec:
    """Check one task's fields and encode its payload; raise InvalidTask saying what is wrong.

    ``max_retries`` left out (None) is resolved by the enqueue script: the type's default
    if a worker registered one, else the queue's ``settings.max_retries``. ``trace`` is
    the W3C traceparent to store with it (see :mod:`reliq.tracing`). ``unique`` (or a
    ``unique_key``): while a task of the same type and key is pending, scheduled,
    retrying or running, enqueuing returns that task's id instead (docs/retries.md).
    """
    if not isinstance(type, str) or not type.strip(WHITESPACE):
        raise InvalidTask("'type' must be a non-empty string")
    if len(type) > MAX_TYPE_LEN:
        raise InvalidTask(f"'type' must be at most {MAX_TYPE_LEN} characters")
    retries = max_retries
    if isinstance(retries, float) and retries.is_integer():
        retries = int(retries)  # JSON Schema's integer: 3.0 is one
    if retries is not None and (not _is_int(retries) or not 0 <= retries <= MAX_RETRIES_LIMIT):
        raise InvalidTask(f"'max_retries' must be an integer from 0 to {MAX_RETRIES_LIMIT}")
    delay_s = _number("delay_s", delay, 0.0, MAX_DELAY_S) or 0.0
    timeout_s = _number("timeout_s", timeout, 0.001, MAX_TIMEOUT_S)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise InvalidTask("'idempotency_key' must be a string of 1 to 200 characters")
    _check_unique(unique, unique_key)
    try:
        body = orjson.dumps(payload)
    except TypeError as exc:
        raise InvalidTask(f"'payload' is not JSON-serialisable: {exc}") from None
    return TaskSpec(
        type=type,
        payload=body,
        max_retries=retries,
        timeout_ms=None if timeout_s is None else math.ceil(timeout_s * 1000),
        delay_ms=math.ceil(delay_s * 1000),
        idempotency_key=idempotency_key or "",
        id=new_id(),
        run_at_ms=_run_at_ms(run_at),
        trace=trace,
        priority=priorities.check(priority),
        unique=unique,
        unique_key=unique_key or "",
        key="" if key is None else check_key(key),
    )


def _check_unique(unique: Any, key: Any) -> None:
    if unique is not None and not isinstance(unique, bool):
        raise InvalidTask("'unique' must be true or false")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY):
        raise InvalidTask(f"'unique_key' must be a string of 1 to {MAX_UNIQUE_KEY} characters")
    if key is not None and unique is False:
        raise InvalidTask("'unique_key' makes a task unique: leave 'unique' out or make it true")


#: An RFC 3339 date-time (section 5.6), field by field: the OpenAPI schema states the
#: same pattern, so what it admits and what the API accepts are one set of strings.
RFC3339 = (r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)"
           r"(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$")
_RFC3339 = re.compile(RFC3339)


def _parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 time: lower-case t/z and year 0 too; no leap seconds, no 02-30."""
    m = _RFC3339.fullmatch(value)
    if not m:
        raise ValueError(value)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7), m.group(8)
    offset = timedelta(0) if zone in ("Z", "z") else (1 if zone[0] == "+" else -1) * timedelta(
        hours=int(zone[1:3]), minutes=int(zone[4:6]))
    if year == 0:  # before anything Python's datetime holds: in the past, so due now
        datetime(4, month, day)  # a leap year like 0, to check the day all the same
        return datetime(1, 1, 1, tzinfo=UTC)
    return datetime(year, month, day, hour, minute, second, int(float(frac or 0) * 1_000_000),
                    tzinfo=timezone(offset))


def _run_at_ms(value: Any) -> int:
    """An RFC 3339 time (string or aware datetime) as ms on the epoch; 0 for None.

    A time in the past runs now. There is no ceiling: the API takes what its schema
    says, and a task scheduled years ahead is visible (``scheduled``) and cancellable.
    """
    if value is None:
        return 0
    when = value
    if isinstance(value, str):
        try:
            when = _parse_rfc3339(value)
        except ValueError:
            raise InvalidTask(f"'run_at' must be an RFC 3339 time like 2030-01-02T03:04:05Z, not {value!r}") from None
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise InvalidTask("'run_at' must be an RFC 3339 time with a time zone (Z or +hh:mm)")
    return max(int(when.timestamp() * 1000), 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidTask(f"'{name}' must be a number from {low:g} to {high:g}")
    return float(value)


@dataclass(slots=True)
class Claimed:
    """A task a worker has claimed: its id and what the handler needs."""

    id: str
    type: str
    payload: bytes
    attempts: int
    failures: int
    max_retries: int
    crashes: int
    timeout_ms: int | None
    queued_at: int
    started_at: int
    queue: str
    trace: str = ""  # traceparent stored at enqueue ("" = none)
    unique: str = ""  # the name of its unique lock ("" = none), freed by the settle that ends it
    key: str = ""  # the task's key ("" = none): see docs/flow-control.md


def known_small(t: Claimed) -> bool:
    """Whether the record of claimed task ``t`` is a listpack, as far as its claim shows.

    Every value the claim returned is at most LISTPACK_VALUE bytes and no earlier run
    failed or crashed (whose error, of any length, the record would hold). What the claim
    does not show (an idempotency key, a dead task's edits or error once it is
    requeued, the run history a snooze or a rate limit left) may still have made it a
    hash table: its succeeded record then keeps that encoding (more memory until
    retention removes it; settle.lua), never a wrong field.
    """
    return (not t.failures and not t.crashes and len(t.payload) <= LISTPACK_VALUE and len(t.type) <= LISTPACK_VALUE
            and len(t.key) <= LISTPACK_VALUE and len(t.unique) <= LISTPACK_VALUE and len(t.trace) <= LISTPACK_VALUE)


@dataclass(slots=True)
class Outcome:
    """What became of one run of a claimed task, for the batched settle."""

    task: Claimed
    outcome: RunOutcome
    text: str  # JSON result for ok, the error otherwise
    run_ms: int
    retry_delay_ms: int = 0


class RunEntry(TypedDict):
    """One run of a task that did not succeed, as its record's run history keeps it (formats.RUN_FIELDS)."""

    #: The attempt that ran (0 when none was counted).
    attempt: int
    at: str | None
    worker: str | None
    #: A RunOutcome other than ok (error, timeout, permanent, ...), or crashed: its worker died running it.
    outcome: str
    error: str | None
    #: The state the run left the task in (retrying, dead, scheduled, pending, cancelled).
    state: str


class TaskInfo(TypedDict):
    """A task record as the API returns it."""

    task_id: str
    type: str
    state: str
    attempts: int
    failures: int
    crashes: int
    #: None, as payload and worker, once a succeeded record is compact (docs/memory.md).
    max_retries: int | None
    payload: Any
    result: Any
    last_error: str | None
    reason: str | None
    worker: str | None
    #: 0 (lowest) to 9 (highest), 5 when the task named none.
    priority: int
    #: The task's key (docs/flow-control.md); None without one, and once a succeeded record is compact.
    key: str | None
    enqueued_at: str | None
    started_at: str | None
    finished_at: str | None
    #: What the handler last reported (ctx.progress), 0 to 1, and when; None before its
    #: first report, and once the task succeeded or went back to wait for another attempt.
    progress: float | None
    progress_message: str | None
    progress_at: str | None
    #: When a cancel was asked for while it ran (None: never); it ends once its worker stopped it.
    cancel_requested_at: str | None
    #: Its last runs that did not succeed, oldest first (at most formats.Runs.KEPT); [] when
    #: every run so far succeeded (docs/retries.md: run history).
    runs: list[RunEntry]


class Snapshot(TypedDict):
    """Queue depths and counters at one instant (the core of GET /stats)."""

    queue: str
    pending: int
    processing: int
    delayed: int
    dead_letter: int
    #: Seconds since the oldest task in the dead-letter queue died (0 when it is empty).
    dead_oldest_age_s: float
    #: Entries in the dead-letter archive (tasks evicted past the cap).
    dead_archived: int
    workers: int
    lag_s: float
    enqueued: int
    succeeded: int
    failed: int
    retried: int
    dead: int
    recovered: int
    requeued: int
    cancelled: int
    cancelled_running: int
    dead_evicted: int
    dead_archive_dropped: int
    dead_imported: int
    refused_memory: int
    trimmed: int
    expired: int
    snoozed: int
    #: Enqueues answered with the id of a live task of the same type and unique key.
    unique_hits: int
    schedule_enqueued: int
    schedule_skipped: int
    rate_limited: int
    #: Pending tasks of paused types set aside in their held lists (counted in ``pending`` too).
    held: int
    #: Pending tasks set aside until their type's next token, or a hold's end (counted in ``pending`` too).
    limited: int
    #: Pending tasks with a key, waiting in their keys' lists (counted in ``pending`` too).
    keyed: int
    #: What is paused: the whole queue and/or task types (reliq/pausing.py).
    paused: PauseView
    #: Pending tasks of each priority, "9" to "0" (reliq/priorities.py); held ones are in ``held`` only.
    pending_by_priority: dict[str, int]
    #: A partitioned queue's partitions, each its index, tag, primary and depths (reliq/partitions.py).
    partitions: NotRequired[list[dict[str, Any]]]


@dataclass(slots=True)
class Take:
    """What one claim call got: the tasks, and why it may have stopped short."""

    tasks: list[Claimed]
    #: A crash suspect waits for this worker to hold nothing else.
    blocked: bool = False
    #: The whole queue is paused: nothing was claimed.
    paused: bool = False
    #: Tasks set aside (a rate limit's, a hold's) are due in this many seconds (0: none).
    wait_s: float = 0.0


class ArchivedTask(TypedDict):
    """A dead task evicted into the archive: when, and its whole record as it was."""

    task_id: str
    evicted_at: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Source:
    """One Redis list or sorted set holding tasks of a state, as the task listing reads it.

    ``kind``: ``pending`` (a ready list: ``arg`` its priority, '' for the default's),
    ``held`` (a paused type's, ``arg`` the type), ``group`` (one key's pending list,
    ``arg`` its group id), ``delayed`` (the sorted set of scheduled and retrying tasks),
    ``processing`` (a worker's, ``arg`` the worker id) or ``dead``. Lists read newest
    first; the sorted set soonest due first.
    """

    kind: str
    arg: str = ""
    length: int = 0
    #: The partition it is of (reliq/partitions.py; 0 for a queue of one partition).
    partition: int = 0


@dataclass(frozen=True, slots=True)
class Browsed:
    """What one read of a source found (reliq/lua/browse.lua)."""

    #: The position to read from next; -1 when the source ended.
    next: int
    #: How many ids were read.
    read: int
    #: (id, score or "", position, [type, key, state, the fields asked for]) of each match.
    rows: list[tuple[str, str, int, list[str]]]


#: Task ids read a pipelined round trip by the bulk reads (:meth:`Queue.task_fields` and
#: :meth:`Queue.records`): a few hundred KB of replies at most, and no Redis stall.
READ_CHUNK = 2000


class Queue:
    """One named queue on one Redis: enqueue, claim, settle, recover, inspect.

    A queue as producers name it (``partition`` None) may be partitioned
    (reliq/partitions.py): it then reads its partition map now and then, sends each
    enqueue to one partition and each task id to the partition it names, and reads as
    the sum of its partitions. A partition is a ``Queue`` too, named by its hash tag,
    with ``partition`` its index: it is the one place its keys are used, as a queue of
    one partition is (the default: its own only partition).
    """

    def __init__(self, redis: Redis, settings: Settings, name: str | None = None,
                 partition: int | None = None, of: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.name = name or settings.queue
        self.keys = QueueKeys(self.name)
        #: None: the queue as producers name it; else the index of the partition this is.
        self.partition = partition
        #: The queue's name as producers give it (a partition's is its queue's).
        self.of = of or self.name
        #: How many partitions the queue this is one of has (1: a queue of one partition).
        self.share = 1
        self._reading: asyncio.Future[None] | None = None  # the map's read in flight, shared
        self._scripts = Scripts(redis)
        self._priority_step = priorities.step_ms(settings.priority_aging)
        #: The queue's partitions, as last read (reliq/partitions.py).
        self.layout: partitions.Layout[Queue] = partitions.Layout(
            self, lambda tag, i: Queue(redis, settings, tag, partition=i, of=self.name), fixed=partition is not None)

    # -- partitions (reliq/partitions.py) ------------------------------------------

    def adopt(self, pmap: PartitionMap) -> None:
        """Use ``pmap`` as this queue's partition map (until it is read again, REFRESH_S later)."""
        self.layout.adopt(pmap)
        for part in self.layout.parts:
            part.share = pmap.n

    @property
    def pmap(self) -> PartitionMap:
        """The partition map as last read."""
        return self.layout.pmap

    def parts_now(self) -> list[Queue]:
        """The partitions as last read: ``[self]`` for a queue of one partition (or a partition)."""
        return self.layout.parts

    async def parts(self) -> list[Queue]:
        """The partitions, the map read again when older than REFRESH_S (one GET)."""
        if self.layout.stale:
            # Concurrent callers share one read, and all go on in the same turn of the loop once it
            # is back (a lock would let them through one a turn, and the enqueues they make would
            # no longer share round trips); shielded: a caller cancelled does not cancel the others'.
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read_map())
                self._reading.add_done_callback(_retrieved)
            await asyncio.shield(self._reading)
        return self.layout.parts

    async def _read_map(self) -> None:
        try:
            self.adopt(PartitionMap.decode(self.name, await self.partition_map()))
            if self.layout.pmap.n > 1:  # tasks unique by their type's default route by payload
                self.layout.router.unique_types = partitions.unique_types(await self.redis.hgetall(self.keys.types))
        finally:
            self._reading = None

    async def place(self, specs: Sequence[TaskSpec]) -> tuple[Queue, Sequence[TaskSpec]]:
        """The partition a batch goes to, and its specs with ids naming it (InvalidTask: keys of two)."""
        await self.parts()
        return self.layout.place(specs)

    async def locate(self, task_id: str) -> Queue:
        """The partition holding ``task_id``, from the id alone (itself for one partition)."""
        await self.parts()
        return self.layout.locate(task_id)

    async def _spread(self) -> list[Queue] | None:
        """The partitions when this queue has more than one (a method then asks each), else None."""
        parts = await self.parts()
        return parts if parts[0] is not self else None

    async def _by_partition(self, ids: Sequence[str]) -> dict[Queue, list[str]]:
        """``ids`` grouped by the partition each names, in their order."""
        await self.parts()
        groups: dict[Queue, list[str]] = {}
        for task_id in ids:
            groups.setdefault(self.layout.locate(task_id), []).append(task_id)
        return groups

    async def partition_map(self) -> bytes | None:
        """The partition map as stored (None: none, one partition)."""
        return cast(bytes | None, await self.redis.get(self.keys.partitions))

    async def write_partition_map(self, expected: bytes, new: bytes) -> tuple[bool, bytes]:
        """Write the map ``new`` only over ``expected`` (b"" = none); (written, the map now)."""
        written, current = await self._scripts("partition_map", [self.keys.partitions], [expected, new])
        return int(written) == 1, current

    async def live_workers(self) -> int:
        """Workers whose last heartbeat is within the lease (by the Redis clock)."""
        sec, usec = await self.redis.time()
        now = sec * 1000 + usec // 1000
        return int(await self.redis.zcount(self.keys.workers, now - int(self.settings.lease * 1000), "+inf"))

    # -- producing ---------------------------------------------------------------

    async def enqueue_specs(self, specs: Sequence[TaskSpec], replicas: int = 0) -> list[tuple[str, Enqueued]]:
        """Enqueue all ``specs`` atomically; return (task id, what became of it) for each.

        The id is an earlier task's when a repeated idempotency key or a live task of the
        same type and unique key stands for the task (``Enqueued.REPEATED``, ``EXISTING``).

        Raises QueueFull past ``settings.max_pending`` and RedisFull when Redis is past
        ``settings.max_memory_ratio`` of its maxmemory, or at it (nothing written). With
        ``replicas``, waits (WAIT, on the same connection) until that many replicas
        have the tasks, and raises NotReplicated when they do not answer in time —
        the tasks are enqueued on the primary all the same.
        """
        target, specs = await self.place(specs)
        if target is not self:
            return await target.enqueue_specs(specs, replicas)
        keys = calls.enqueue_keys(self.keys)
        batch = calls.enqueue_batch(specs)
        args = calls.enqueue_args(self.settings, batch)
        if replicas and isinstance(self.redis, RedisCluster):
            # WAIT must follow the write on the same connection, and the cluster client
            # neither pipelines scripts nor routes a keyless WAIT to the queue's node.
            raise InvalidTask("'durability': 'replicated' is not available on Redis Cluster; use a primary "
                              "with replicas (plain or Sentinel), or 'memory'")
        try:
            memory = guard(self.redis, self.settings.max_memory_ratio)
            await memory.admit(self.name, len(batch) + TASK_BYTES * len(specs), self.keys.pending)
            if replicas:
                async with self.redis.pipeline(transaction=False) as pipe:
                    await self._scripts("enqueue", keys, args, client=pipe)
                    pipe.execute_command("WAIT", replicas, int(self.settings.replication_timeout * 1000))
                    raw, acked = await pipe.execute()
            else:
                raw = await self._scripts("enqueue", keys, args)
        except (RedisFull, ResponseError) as exc:
            refusal = exc if isinstance(exc, RedisFull) else calls.refused(exc, self.name)
            if isinstance(refusal, RedisFull):
                await self._scripts("count", *calls.count_refused(self.keys, len(specs)))
            raise refusal or exc from None
        results = calls.enqueued(raw, self.name, self.settings)
        if replicas and acked < replicas:
            raise NotReplicated(results, int(acked), replicas)
        return results

    async def enqueue(self, type: str, payload: Any = None, **options: Any) -> str:
        """Validate and enqueue one task; return its id."""
        spec = make_spec(type, payload, trace=tracing.current(), **options)
        [(task_id, _)] = await self.enqueue_specs([spec])
        return task_id

    async def set_type_defaults(self, fields: Mapping[str, bytes], cleared: Sequence[str]) -> None:
        """Set types' entries of the types hash (type -> encoded defaults) and take others out.

        See :mod:`reliq.type_defaults`, which encodes them. ``types.lua`` writes them even
        on a full Redis, so that a worker started there gets to drain it.
        """
        args: list[str | bytes] = [x for item in fields.items() for x in item]
        await self._scripts("types", [self.keys.types], [*args, "", *cleared])

    async def get(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raise TaskNotFound when there is none."""
        where = await self.locate(task_id)
        return record_of(task_id, await where.redis.hgetall(where.keys.task(task_id)))

    async def cancel(self, task_id: str, forget: bool = False) -> str:
        """Cancel a task; return the state it was in.

        The record stays (state ``cancelled``) for the result TTL, or with ``forget`` goes
        at once (HTTP ``DELETE``: the resource is gone). A running task (``processing``)
        ends so once its worker has stopped it, within about a second (docs/cancel.md).
        Raises TaskNotFound, or CancelRefused when the task has finished.
        """
        where = await self.locate(task_id)
        args = calls.cancel_args(task_id, self.settings, forget)
        return calls.cancelled(task_id, await where._scripts("cancel", calls.cancel_keys(where.keys), args))

    async def watch(self, task_id: str, hub: str, ttl_ms: int) -> str:
        """The task's state ('' if there is no record); unless it has ended, mark it waited for by ``hub``.

        From then on the script that ends the task pushes its id to ``keys.wake(hub)``
        (see :mod:`reliq.waiting`, which is what calls this).
        """
        return text(await self._scripts("watch", calls.watch_keys(self.keys, task_id),
                                        calls.watch_args(task_id, hub, ttl_ms)))

    async def unwatch(self, task_id: str, hub: str) -> None:
        """Take ``hub`` out of the task's mark: nobody there waits for it any more."""
        await self._scripts("unwatch", calls.unwatch_keys(self.keys), [task_id, hub])

    async def next_wake(self, hub: str, block_s: float, client: Redis) -> str | None:
        """Block up to ``block_s`` for a task ``hub`` waits for to end; its id, or None.

        ``client`` is a connection that may block this long (:mod:`reliq.waiting`'s own).
        """
        got = await client.blpop([self.keys.wake(hub)], block_s)
        return text(got[1]) if got else None

    # -- working ------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, moved: str = "",
                    elsewhere: int = 0) -> tuple[list[Claimed], bool]:
        """Claim up to ``limit`` tasks (and ``moved``, already in the worker's list).

        ``elsewhere`` is how many tasks the worker holds in other queues. Returns the
        claimed tasks and whether a crash suspect is waiting for this worker to hold
        nothing else.
        """
        take = await self.take(worker_id, limit, moved, elsewhere)
        return take.tasks, take.blocked

    async def take(self, worker_id: str, limit: int, moved: str = "", elsewhere: int = 0) -> Take:
        """:meth:`claim`, also telling whether the whole queue is paused (then nothing is claimed).

        And when set-aside tasks (docs/flow-control.md) are due, if this claim could have
        taken more than it got.
        """
        raw = await self._scripts("claim", self._claim_keys(worker_id),
                                  [limit, worker_id, moved, elsewhere, self._priority_step])
        now = int(raw[1])
        rows = iter(raw[CLAIM_HEAD:])
        # Positional and in one comprehension: this parse was a tenth of a worker's CPU. The
        # names unpacked are formats.CLAIM_FIELDS, in order (tests/test_formats.py checks).
        tasks = [Claimed(i.decode(), t.decode(), p, int(a), int(f), m, int(c), to, int(q or now), now, self.name,
                         tr, u, k.decode() if k else "")
                 for i, t, p, a, f, c, q, o, k in zip(*[rows] * CLAIM_WIDTH, strict=True)
                 for m, to, tr, u in (split_opts(o),)]
        return Take(tasks, raw[0] == Code.SUSPECT_WAITS, raw[0] == Code.PAUSED, int(raw[2]) / 1000)

    def _claim_keys(self, worker_id: str) -> list[str]:
        k = self.keys
        return [k.pending, k.processing(worker_id), k.task_prefix, k.workers, k.paused, k.held_prefix,
                k.priority_prefix, k.priorities, k.limits, k.tat, k.limited_prefix, k.limited_due, *calls.group_keys(k)]

    async def pause(self, task_type: str | None, by: str) -> tuple[bool, int]:
        """Pause the whole queue (``task_type`` None) or one type; return (paused now, since ms).

        False when it was paused already (the first pause's time and author stay). A
        partitioned queue is paused in every partition (partition 0's answer is the queue's).
        """
        parts = await self.parts()
        if parts[0] is not self:
            answers = [await part.pause(task_type, by) for part in parts]
            return answers[0]
        code, since = await self._scripts("pause", [self.keys.paused], [pausing.field(task_type), by])
        return code == Code.OK, int(since)

    async def resume(self, task_type: str | None) -> tuple[bool, int]:
        """Resume the queue or one type; return (whether it was paused, held tasks moved back to pending).

        A type's held tasks go back :data:`pausing.RESUME_CHUNK` a script call; claims take
        the type as usual from the first call on.
        """
        name = pausing.field(task_type)
        parts = await self.parts()
        if parts[0] is not self:
            done = [await part.resume(task_type) for part in parts]
            return any(was for was, _ in done), sum(moved for _, moved in done)
        k = self.keys
        keys = [k.paused, k.pending, k.held(name), k.task_prefix, k.priority_prefix, k.priorities,
                *calls.group_keys(k)]
        was, total, first = False, 0, "1"
        while True:
            code, moved, left = await self._scripts("resume", keys, [name, pausing.RESUME_CHUNK, first])
            was, total, first = was or code != Code.ALREADY, total + int(moved), ""
            if code == Code.PAUSED or int(left) == 0:  # paused again: what is left stays held
                return was, total

    async def paused(self) -> PauseView:
        """What is paused in this queue (read with the snapshot; this reads only that)."""
        return (await self.snapshot())["paused"]

    async def write_limits(self, which: str, layers: Mapping[str, Layer | None]) -> int:
        """Write layer ``which`` ('declared' or 'set') of the limits of each type (None removes it).

        Returns how many types' merged limits changed. A partitioned queue's are written to
        every partition, each enforcing its share of a rate (limit.lua), so that together
        they never pass it.
        """
        if not layers:
            return 0
        parts = await self.parts()
        if parts[0] is not self:
            changed = [await part.write_limits(which, layers) for part in parts]
            return changed[0]
        keys = [self.keys.limits, self.keys.limit_sources]
        return int(await self._scripts("limit", keys, [which, orjson.dumps(dict(layers)), self.share]))

    async def set_limits(self, task_type: str, layer: Layer) -> LimitView:
        """Set ``layer``'s fields of the type's run-time limits (the rest stay); its view after.

        InvalidTask when the merged limits would be ``ordered`` without a key concurrency of 1.
        """
        task_type = pausing.field(task_type)
        current = (await self.limit_sources()).get(task_type, {})
        new_set = {**current.get("set", {}), **layer}
        check_ordered(merged(current.get("declared", {}), cast(Layer, new_set)))
        await self.write_limits("set", {task_type: layer})
        return (await self.limits([task_type]))[task_type]

    async def limit_sources(self) -> dict[str, dict[str, Layer]]:
        """Each type with limits -> its layers as stored ({"declared": ..., "set": ...})."""
        raw = await self.redis.hgetall(self.keys.limit_sources)
        return {text(k): orjson.loads(v) for k, v in raw.items()}

    async def limits(self, types: Sequence[str] | None = None) -> dict[str, LimitView]:
        """The limits of every type that has some (or of ``types``), with what each holds set aside now."""
        sources = await self.limit_sources()
        names = sorted(sources) if types is None else list(types)
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                pipe.llen(k.limited(name))
                pipe.zscore(k.limited_due, name)
            raw = await pipe.execute()
        sec, usec = raw[0]
        now = sec * 1000 + usec // 1000
        out = {}
        for i, name in enumerate(names):
            held, due = int(raw[1 + 2 * i]), raw[2 + 2 * i]
            due_in = max(0.0, (float(due) - now) / 1000) if due is not None and held else None
            out[name] = limit_view(sources.get(name, {}), held, due_in)
        return out

    async def settle(self, worker_id: str, outcomes: Iterable[Outcome],
                     retention: Mapping[str, Retention] | None = None,
                     progressed: Collection[str] = ()) -> tuple[int, int]:
        """Record a batch of outcomes; return (applied, stale).

        ``retention``: the task types that keep their succeeded records otherwise than
        the queue (``settings.result_ttl`` and ``settings.keep_succeeded``). ``progressed``:
        tasks that reported progress (``ctx.progress``), whose compact succeeded record
        drops those fields too.
        """
        k = self.keys
        own: dict[str, tuple[int, int]] = {}
        batch: list[object] = []
        sums: Counter[str] = Counter()  # the metrics fields, summed here: see settle.lua
        # Each field as formats.metric() writes it, spelled out: this loop runs a task. Plain
        # strs, and the outcome (a StrEnum) formatted with !s: formatting an enum member
        # costs ~0.3 us more a field (timeit).
        s = SEP
        runs, wait, wait_sum, run, run_sum = (m.value + s for m in (Metric.RUNS, Metric.WAIT, Metric.WAIT_SUM,
                                                                    Metric.RUN, Metric.RUN_SUM))
        for o in outcomes:
            t = o.task
            wait_ms = max(0, t.started_at - t.queued_at)
            wait_b, run_b = bucket(wait_ms), bucket(o.run_ms)
            batch += (t.id, t.type, t.max_retries, o.outcome, o.text, o.retry_delay_ms,
                      wait_ms, o.run_ms, wait_b, run_b, t.unique, t.key,  # flat: formats.SETTLE_FIELDS
                      "1" if known_small(t) and t.id not in progressed else "")
            ty = t.type
            sums.update((f"{runs}{ty}{s}{o.outcome!s}", f"{wait}{ty}{s}{wait_b}", f"{run}{ty}{s}{run_b}"))
            sums[wait_sum + ty] += wait_ms
            sums[run_sum + ty] += o.run_ms
            if retention and t.type in retention and t.type not in own:
                own[t.type] = retention[t.type].limits(self.settings)
        args = [int(self.settings.result_ttl * 1000), orjson.dumps(batch), orjson.dumps(sums),
                self.settings.keep_succeeded, orjson.dumps(own), orjson.dumps(list(progressed))]
        keys = [k.processing(worker_id), k.pending, k.delayed, k.dead, k.stats, k.metrics, k.task_prefix,
                k.succeeded, k.succeeded_prefix, k.waiters, k.wake_prefix, k.priority_prefix, k.cancels(worker_id),
                k.idem_prefix, k.unique_prefix, k.limits, k.limited_prefix, k.limited_due, *calls.group_keys(k)]
        applied, stale = await self._scripts("settle", keys, args)
        return int(applied), int(stale)

    async def trim_succeeded(self, retention: Mapping[str, Retention], budget: int = 1000) -> tuple[int, int]:
        """Delete succeeded records past their retention (count, then age); (trimmed, expired).

        The queue's own list, and the lists of the types in ``retention``; at most
        ``budget`` ids a list a call, called again while a list may have had more.
        """
        k = self.keys
        lists = [(k.succeeded, (int(self.settings.result_ttl * 1000), self.settings.keep_succeeded))]
        lists += [(k.succeeded_prefix + name, r.limits(self.settings)) for name, r in sorted(retention.items())]
        total = [0, 0]
        while True:
            args: list[Any] = [budget]
            for _, (age, count) in lists:
                args += [age, count]
            trimmed, expired = await self._scripts("trim", [k.stats, k.task_prefix, *(key for key, _ in lists)], args)
            total[0] += int(trimmed)
            total[1] += int(expired)
            if int(trimmed) + int(expired) < budget:
                return total[0], total[1]

    async def promote(self, limit: int = 1000) -> int:
        """Move due delayed tasks into pending; return how many moved."""
        k = self.keys
        total = 0
        while True:
            keys = [k.delayed, k.pending, k.task_prefix, k.priority_prefix, k.priorities,
                    *calls.group_keys(k)]
            n = int(await self._scripts("promote", keys, [limit]))
            total += n
            if n < limit:
                return total

    async def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float,
                        counts: dict[str, int] | None = None) -> tuple[int, bool]:
        """Stamp the worker alive; return (server time ms, whether it was registered).

        ``counts`` are metrics increments the beat carries (see :func:`heartbeat_call`).
        The worker's own heartbeat (a thread) also reads its cancel requests: :func:`beat_of`.
        """
        beat = beat_of(await self._scripts("heartbeat", *heartbeat_call(self.name, worker_id, info, ttl_s, counts)))
        return beat.now_ms, beat.known

    async def progress(self, worker_id: str, reports: Sequence[tuple[str, float, str]]) -> int:
        """Write (task id, progress, message) for tasks worker ``worker_id`` runs; return how many were written.

        A task that no longer runs there (ended, reclaimed) is skipped (``progress.lua``).
        """
        batch = orjson.dumps([(task_id, f"{value:.6g}", message) for task_id, value, message in reports])
        return int(await self._scripts("progress", [self.keys.task_prefix], [worker_id, batch]))

    @property
    def ready_channel(self) -> str:
        """The channel the scripts nudge idle workers on when this queue's pending list gets its first id.

        A worker process subscribes to its queues' on one connection (reliq/worker/nudges.py).
        """
        return self.keys.ready_channel

    def cancel_channel(self, worker_id: str) -> str:
        """The channel ``cancel.lua`` nudges worker ``worker_id`` on with the id of a task to stop."""
        return self.keys.cancel_channel(worker_id)

    async def reap_round(self, owner: str, lease_s: float, interval_s: float, gap_s: float,
                         grace_s: float) -> list[str]:
        """Start a reaper's round: the workers silent past the lease (by the server's clock).

        Empty when another reaper holds this round (for ``interval_s``), or for ``grace_s``
        after no round reached Redis for over ``gap_s`` (an outage; see ``reap_scan.lua``).
        """
        k = self.keys
        args = [owner, max(1, int(interval_s * 1000)), int(lease_s * 1000), int(gap_s * 1000), int(grace_s * 1000)]
        return [text(w) for w in await self._scripts("reap_scan", [k.workers, k.reaper_lock, k.reaper_clock], args)]

    async def reap(self, worker_id: str, lease_s: float) -> tuple[int, int, int] | None:
        """Requeue a silent worker's tasks; (recovered, quarantined, cancelled), None if it is alive.

        The tasks it was asked to cancel while running them end cancelled instead.
        """
        k = self.keys
        keys = [k.workers, k.processing(worker_id), k.pending, k.dead, k.stats, k.worker_info(worker_id), k.task_prefix,
                k.waiters, k.wake_prefix, k.priority_prefix, k.priorities, k.cancels(worker_id), k.idem_prefix,
                k.unique_prefix, *calls.group_keys(k)]
        args = [worker_id, int(lease_s * 1000), self.settings.crash_limit, int(self.settings.result_ttl * 1000)]
        code, recovered, quarantined, cancelled = await self._scripts("reap", keys, args)
        return None if code == Code.ALIVE else (int(recovered), int(quarantined), int(cancelled))

    async def release(self, worker_id: str) -> int:
        """Hand back everything the worker holds and deregister it (graceful shutdown); return how many went back.

        A task it was asked to cancel is not handed back: it ends cancelled.
        """
        k = self.keys
        keys = [k.processing(worker_id), k.pending, k.workers, k.worker_info(worker_id), k.task_prefix,
                k.priority_prefix, k.priorities, k.cancels(worker_id), k.idem_prefix, k.stats, k.waiters, k.wake_prefix,
                k.unique_prefix, *calls.group_keys(k)]
        handed, _ = await self._scripts("release", keys, [worker_id, int(self.settings.result_ttl * 1000)])
        return int(handed)

    # -- periodic schedules (reliq/schedules.py) -------------------------------------------

    async def schedule_rows(self, name: str = "") -> list[Any]:
        """``schedules.lua``'s reply: the Redis clock, then each schedule's hash and last task's state."""
        k = self.keys
        return cast(list[Any], await self._scripts("schedules", [k.schedules, k.schedule_prefix, k.task_prefix],
                                                   [name]))

    async def schedule_put(self, schedule: Schedule, source: ScheduleSource) -> Put:
        """Write a definition (``source`` code or api); what schedule_put.lua did with it."""
        k = self.keys
        outcome, _ = await self._scripts("schedule_put", [k.schedules, k.schedule(schedule.name)],
                                         [schedule.name, schedule.to_json(), schedule.version, schedule.when, source])
        return Put(text(outcome))

    async def schedule_remove(self, name: str) -> bool:
        """Remove a schedule; False when there was none."""
        k = self.keys
        return int(await self._scripts("schedule_remove", [k.schedules, k.schedule(name)], [name])) == 1

    async def schedule_pause(self, name: str, pause: bool, by: str) -> bool:
        """Pause or resume a schedule: whether this changed it; ScheduleNotFound when there is no such schedule."""
        code = int(await self._scripts("schedule_pause", [self.keys.schedule(name)],
                                       ["1" if pause else "", by]))
        if code < 0:
            raise script_error(code, name=name)
        return code == Code.OK

    async def schedule_fire(self, name: str, version: str, upto: str, plan: Plan, slots: bytes) -> Fire:
        """Record a decision made from cursor ``upto`` (as read); Fire.OK, or why it was not (schedule_fire.lua)."""
        k = self.keys
        args = [version, upto, plan.upto, plan.skipped, slots, plan.run[-1] if plan.run else ""]
        outcome, _ = await self._scripts("schedule_fire", [k.schedule(name), k.stats], args)
        return Fire(text(outcome))

    async def schedule_enqueued(self, name: str, firing: bytes, task_id: str) -> bool:
        """Note that a decision's tasks (``firing`` as recorded; b'' for a trigger) are in, the newest ``task_id``."""
        return int(await self._scripts("schedule_enqueued", [self.keys.schedule(name)], [firing, task_id])) == 1

    # -- dead letters ----------------------------------------------------------------

    async def dead_requeue(self, ids: Sequence[str] = (), oldest: int = 0) -> int:
        """Requeue the given dead ids, or the ``oldest`` n; return how many went back (each into
        its own partition; the oldest partition by partition)."""
        if (parts := await self._spread()) is not None:
            return await _over_partitions(parts, ids, oldest, await self._by_partition(ids), Queue.dead_requeue)
        k = self.keys
        args: list[Any] = [oldest] if oldest else [0, *ids]
        keys = [k.dead, k.pending, k.stats, k.task_prefix, k.priority_prefix, k.priorities, k.unique_prefix,
                *calls.group_keys(k)]
        return int(await self._scripts("dead_requeue", keys, args))

    async def dead_purge(self, ids: Sequence[str] = (), oldest: int = 0) -> int:
        """Delete the given dead ids, or the ``oldest`` n, with their records."""
        if (parts := await self._spread()) is not None:
            return await _over_partitions(parts, ids, oldest, await self._by_partition(ids), Queue.dead_purge)
        args: list[Any] = [oldest] if oldest else [0, *ids]
        return int(await self._scripts("dead_purge", [self.keys.dead, self.keys.task_prefix], args))

    async def dead_trim(self, most: int = 1000) -> tuple[list[str], list[str]]:
        """Evict dead tasks past the cap into the archive, at most ``most`` a call.

        Returns (ids evicted, ids that fell off the archive past its own cap).
        """
        k = self.keys
        evicted, dropped = await self._scripts(
            "dead_trim", [k.dead, k.dead_archive, k.stats, k.task_prefix],
            [self.settings.dead_cap, self.settings.dead_archive_cap, most])
        return [text(i) for i in evicted], [text(i) for i in dropped]

    async def dead_edit(self, task_id: str, payload: Any, by: str) -> bool:
        """Replace a dead task's payload, recording who and the payload replaced; False if not dead."""
        try:
            body = orjson.dumps(payload)
        except TypeError as exc:
            raise InvalidTask(f"'payload' is not JSON-serialisable: {exc}") from None
        where = await self.locate(task_id)
        return int(await where._scripts("dead_edit", [where.keys.task(task_id)], [body, by, EDITS_KEPT])) == 1

    async def dead_import(self, records: Sequence[tuple[str, list[str]]]) -> list[str]:
        """Recreate dead tasks (id, [field, value, ...]) whose ids do not exist; return those created
        (each in the partition its id names)."""
        if await self._spread() is not None:
            by_part = await self._by_partition([task_id for task_id, _ in records])
            fields = dict(records)
            return [i for part, ids in by_part.items() for i in await part.dead_import([(i, fields[i]) for i in ids])]
        k = self.keys
        raw = await self._scripts("dead_import", [k.dead, k.stats, k.task_prefix], [orjson.dumps(records)])
        return [text(i) for i in raw]

    async def dead_archived(self, before: str = "+", count: int = 1000) -> list[tuple[str, ArchivedTask]]:
        """Archived (evicted) dead tasks, newest first, from stream id ``before`` (exclusive); a partitioned
        queue's merged by stream id (each partition's Redis clock: ms, then a sequence)."""
        if (parts := await self._spread()) is not None:
            merged = [entry for part in parts for entry in await part.dead_archived(before, count)]
            merged.sort(key=lambda entry: tuple(map(int, entry[0].split("-"))), reverse=True)
            return merged[:count]
        end = "+" if before == "+" else "(" + before
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrevrange(self.keys.dead_archive, end, "-", count=count))
        out = []
        for entry_id, raw in entries:
            fields = {text(f): text(v) for f, v in raw.items()}
            task_id, evicted = fields.pop("task_id", ""), fields.pop("evicted_at", "0")
            out.append((text(entry_id), ArchivedTask(task_id=task_id, evicted_at=int(evicted), fields=fields)))
        return out

    async def dead_ids(self, start: int = 0, count: int = 50) -> list[str]:
        """Dead-lettered ids, newest first (over every partition, by when each died)."""
        if (parts := await self._spread()) is not None:
            heads = [i for part in parts for i in await part.dead_ids(0, start + count)]
            died = await self.task_fields(heads, ["finished_at"])
            order = sorted(zip(heads, died, strict=True), key=lambda row: int(row[1][0] or 0), reverse=True)
            return [task_id for task_id, _ in order[start : start + count]]
        return [text(i) for i in await self.redis.lrange(self.keys.dead, start, start + count - 1)]

    async def dead_kinds(self, start: int = 0, count: int = 1000) -> list[tuple[str, str, str]]:
        """(id, type, reason) of dead-lettered tasks from ``start``, newest first, in one call (a
        partitioned queue's one partition after the other, each newest first)."""
        if (parts := await self._spread()) is not None:
            out: list[tuple[str, str, str]] = []
            for part in parts:
                length = int(await part.redis.llen(part.keys.dead))
                if start < length and len(out) < count:
                    out += await part.dead_kinds(start, count - len(out))
                start = max(0, start - length)
            return out
        k = self.keys
        raw = await self._scripts("dead_kinds", [k.dead, k.task_prefix], [start, start + count - 1])
        return [(text(raw[i]), text(raw[i + 1]), text(raw[i + 2])) for i in range(0, len(raw), 3)]

    # -- inspection ---------------------------------------------------------------------

    async def task_fields(self, ids: Sequence[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        """``fields`` of each task in ``ids`` (None where absent), :data:`READ_CHUNK` ids a round trip."""
        return await self._per_task(ids, lambda pipe, key: pipe.hmget(key, list(fields)))

    async def records(self, ids: Sequence[str]) -> list[dict[str, str]]:
        """The whole hash of each task in ``ids`` (empty when gone), :data:`READ_CHUNK` ids a round trip."""
        return [{text(k): text(v) for k, v in raw.items()}
                for raw in await self._per_task(ids, lambda pipe, key: pipe.hgetall(key))]

    async def states(self, ids: Sequence[str]) -> list[str]:
        """The state of each task in ``ids`` ('' when there is no record)."""
        return [text(state) if state else "" for state, in await self.task_fields(ids, ["state"])]

    async def _per_task(self, ids: Sequence[str], command: Callable[[Pipeline, str], object]) -> list[Any]:
        """One command a task hash, pipelined: the replies in the order of ``ids`` (each id read in the
        partition it names)."""
        await self.parts()
        replies: list[Any] = []
        for start in range(0, len(ids), READ_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids[start : start + READ_CHUNK]:
                    command(pipe, self.layout.locate(task_id).keys.task(task_id))
                replies += await pipe.execute()
        return replies

    async def task_ids(self) -> list[str]:
        """The id of every task record of the queue (a SCAN: for audits and tests, not hot paths)."""
        prefix = self.keys.task_prefix
        return [text(key)[len(prefix):] async for key in self.redis.scan_iter(match=prefix + "*", count=1000)]

    async def processing_ids(self, worker_id: str) -> list[str]:
        """The ids in ``worker_id``'s processing list: what it holds (claimed, or moved in by an old BLMOVE)."""
        return [text(i) for i in await self.redis.lrange(self.keys.processing(worker_id), 0, -1)]

    async def processing_lists(self) -> dict[str, list[str]]:
        """Every worker's processing list, also of workers no longer registered (a SCAN, as :meth:`task_ids`)."""
        prefix = self.keys.processing_prefix
        owners = [text(key)[len(prefix):] async for key in self.redis.scan_iter(match=prefix + "*", count=1000)]
        return {worker_id: await self.processing_ids(worker_id) for worker_id in owners}

    async def task_sources(self, state: str, task_type: str | None = None, key: str | None = None) -> list[Source]:
        """The lists (or the sorted set) that hold the tasks in ``state``, with their lengths.

        ``pending``: the ready lists, highest priority first (``pending`` itself, the
        default's, always; another priority's only while it holds something), then the
        held list of each paused type (only ``task_type``'s when given); with ``key`` (and
        its type), that key's own list alone. ``scheduled`` and ``retrying`` share the
        delayed set; ``processing``: each registered worker's list; ``dead``: the dead
        list. Two round trips at most (a partition: those of each, partition after partition).
        """
        if (parts := await self._spread()) is not None:
            return [replace(source, partition=i) for i, part in enumerate(parts)
                    for source in await part.task_sources(state, task_type, key)]
        k = self.keys
        sources: list[Source]
        if state == TaskState.PENDING and key is not None:
            sources = [Source("group", group_id(task_type or "", key))]
        elif state == TaskState.PENDING:
            paused = [text(f) for f in await self.redis.hkeys(k.paused)]
            ready = [Source("pending", "" if p == priorities.DEFAULT else str(p)) for p in reversed(priorities.LEVELS)]
            sources = ready + [Source("held", t) for t in sorted(paused)
                               if t != pausing.QUEUE_FIELD and task_type in (None, t)]
        elif state in (TaskState.SCHEDULED, TaskState.RETRYING):
            sources = [Source("delayed")]
        elif state == TaskState.PROCESSING:
            sources = [Source("processing", w) for w in sorted(await self.worker_ids())]
        elif state == TaskState.DEAD:
            sources = [Source("dead")]
        else:
            raise InvalidTask(f"no listing of tasks in state {state!r}")
        default = [i for i, s in enumerate(sources) if s.kind == "pending" and not s.arg]
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in sources:
                name, kind = self._source_key(source)
                pipe.zcard(name) if kind == "zset" else pipe.llen(name)
            if default:
                # A wake mark (reliq/priorities.py) is no task: left out of the count, as the
                # snapshot does (it was pushed onto an empty pending, so it is near the tail).
                pipe.lpos(k.pending, priorities.WAKE, rank=-1, maxlen=1000)
            lengths = await pipe.execute()
        if default and lengths.pop() is not None:
            lengths[default[0]] -= 1
        return [Source(s.kind, s.arg, int(n)) for s, n in zip(sources, lengths, strict=True)
                if n or s.kind != "pending" or not s.arg]

    def _source_key(self, source: Source) -> tuple[str, str]:
        """The Redis key of ``source`` and whether it is a 'list' or a 'zset'."""
        k = self.keys
        match source.kind:
            case "pending":
                return k.priority_list(int(source.arg)) if source.arg else k.pending, "list"
            case "held":
                return k.held(source.arg), "list"
            case "group":
                return k.group_prefix + source.arg, "list"
            case "delayed":
                return k.delayed, "zset"
            case "processing":
                return k.processing(source.arg), "list"
            case "dead":
                return k.dead, "list"
        raise InvalidTask(f"no task source {source.kind!r}")

    async def browse(self, source: Source, start: int, budget: int, limit: int, fields: Sequence[str],
                     task_type: str = "", state: str = "", key: str = "") -> Browsed:
        """Read at most ``budget`` ids of ``source`` from position ``start``; the first ``limit`` that match.

        A match has ``task_type``, ``state`` and ``key`` ('' = any); each comes with
        its record's type, key and state, then ``fields``. One script call
        (``browse.lua``), bounded by ``budget``, in the source's partition.
        """
        if (parts := await self._spread()) is not None:
            return await parts[source.partition].browse(source, start, budget, limit, fields, task_type, state, key)
        name, kind = self._source_key(source)
        raw = await self._scripts("browse", [name, self.keys.task_prefix],
                                  [kind, start, budget, limit, task_type, state, key, *fields])
        width = 6 + len(fields)
        rows = [(text(raw[i]), text(raw[i + 1]), int(raw[i + 2]), [text(v) for v in raw[i + 3 : i + width]])
                for i in range(2, len(raw), width)]
        return Browsed(int(raw[0]), int(raw[1]), rows)

    async def run_now(self, task_id: str) -> bool:
        """Make a scheduled or retrying task due now and promote it; False when it is not waiting in delayed."""
        if (where := await self.locate(task_id)) is not self:
            return await where.run_now(task_id)
        # Score 0: due, and first of the due ones. XX: a task that left the set meanwhile
        # (promoted, cancelled) is not put back; CH: the reply says whether it was there.
        if not await self.redis.zadd(self.keys.delayed, {task_id: 0}, xx=True, ch=True):
            return False
        await self.promote()
        return True

    async def backlog(self) -> tuple[int, int]:
        """(pending, delayed): how many tasks wait to be claimed, and how many for their time, in one round trip.

        Pending counts every priority's list, and a wake mark (reliq/priorities.py) as one:
        the claim it leads to drops it; and, roughly, what waits in keys' lists or is set
        aside for a token (docs/flow-control.md): not zero while any of it waits. Summed over partitions.
        """
        if (parts := await self._spread()) is not None:
            each = [await part.backlog() for part in parts]
            return sum(p for p, _ in each), sum(d for _, d in each)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.delayed)
            for priority in priorities.LEVELS:
                pipe.llen(self.keys.priority_list(priority))
            pipe.hget(self.keys.groups, "ready")  # tasks in keys' lists
            pipe.zcard(self.keys.limited_due)  # types with tasks set aside
            delayed, *pending, keyed, limited = await pipe.execute()
        return sum(int(n) for n in pending) + int(keyed or 0) + int(limited), int(delayed)

    async def flow_state(self) -> dict[str, int]:
        """The keys' state, for audits (docs/flow-control.md): ``slots`` taken, keys with a marker
        (``markers``), the ``ring``'s length, and the counts ``ready`` and ``aside`` (markers set aside: in
        limited or held lists)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.groups)
            pipe.llen(k.ring)
            raw, ring = await pipe.execute()
        groups = {text(f): int(v) for f, v in raw.items()}
        g = GroupField
        return {"slots": sum(v for f, v in groups.items() if f.startswith(g.SLOTS)),
                "markers": sum(1 for f in groups if f.startswith(g.MARKER)), "ring": int(ring),
                "ready": groups.get(g.READY, 0), "aside": groups.get(g.ASIDE, 0) + groups.get(g.PAUSED, 0)}

    async def worker_ids(self) -> list[str]:
        """The registered workers (those whose heartbeat the reaper has not yet found silent)."""
        if (parts := await self._spread()) is not None:
            return sorted({w for part in parts for w in await part.worker_ids()})
        return [text(w) for w in await self.redis.zrange(self.keys.workers, 0, -1)]

    async def metric_counts(self) -> dict[str, int]:
        """The metrics hash written by settle: per-type outcome counts and histogram buckets (summed
        over the partitions)."""
        if (parts := await self._spread()) is not None:
            total: Counter[str] = Counter()
            for part in parts:
                total.update(await part.metric_counts())
            return dict(total)
        raw = await self.redis.hgetall(self.keys.metrics)
        return {text(k): int(v) for k, v in raw.items()}

    async def workers_info(self) -> tuple[int, list[tuple[str, int, dict[str, str]]]]:
        """Server time (ms) and each registered worker: id, last heartbeat (ms), info hash (each worker
        once, with its latest beat in any partition)."""
        if (parts := await self._spread()) is not None:
            seen: dict[str, tuple[str, int, dict[str, str]]] = {}
            now = 0
            for part in parts:
                now, workers = await part.workers_info()
                for w in workers:
                    if w[0] not in seen or w[1] > seen[w[0]][1]:
                        seen[w[0]] = w
            return now, sorted(seen.values())
        sec, usec = await self.redis.time()
        beats = cast(list[tuple[bytes, float]], await self.redis.zrange(self.keys.workers, 0, -1, withscores=True))
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, _ in beats:
                pipe.hgetall(self.keys.worker_info(text(worker_id)))
            infos = await pipe.execute()
        workers = [(text(w), int(score), {text(k): text(v) for k, v in info.items()})
                   for (w, score), info in zip(beats, infos, strict=True)]
        return sec * 1000 + usec // 1000, workers

    async def snapshot(self) -> Snapshot:
        """Depths, lag and counters of the queue, read in one script (one a partition, then merged,
        with ``partitions``: each partition's own, when the queue has more than one)."""
        parts = await self.parts()
        if parts[0] is not self:
            snaps = await asyncio.gather(*(part.snapshot() for part in parts))
            return partitions.merge(self.name, self.pmap, snaps, await partitions.placement(self.redis, self.pmap))
        k = self.keys
        keys = [k.pending, k.delayed, k.dead, k.workers, k.stats, k.processing_prefix, k.task_prefix,
                k.dead_archive, k.paused, k.held_prefix, k.priority_prefix,
                k.limited_due, k.limited_prefix, k.groups]
        raw = await self._scripts("snapshot", keys, [])
        r = dict(zip(SNAPSHOT_FIELDS, raw, strict=False))
        now, oldest, oldest_dead = int(r["now_ms"]), int(r["oldest_queued_ms"]), int(r["oldest_dead_ms"])
        snap: dict[str, Any] = {
            "queue": self.name,
            "pending": int(r["pending_count"]),
            "processing": int(r["processing_count"]),
            "delayed": int(r["delayed_count"]),
            "dead_letter": int(r["dead_count"]),
            "dead_oldest_age_s": max(0.0, (now - oldest_dead) / 1000) if oldest_dead >= 0 else 0.0,
            "dead_archived": int(r["archive_count"]),
            "workers": int(r["worker_count"]),
            "lag_s": max(0.0, (now - oldest) / 1000) if oldest >= 0 else 0.0,
            "held": int(r["held_count"]),
            "paused": pausing.parse(r["pauses"], now),
            "pending_by_priority": priorities.by_priority(
                dict(zip(reversed(priorities.LEVELS), map(int, r["pending_by_priority"]), strict=True))),
            "limited": int(r["limited_count"]),
            "keyed": int(r["keyed_count"]),
        }
        snap.update(dict.fromkeys(COUNTERS, 0))
        for i in range(len(SNAPSHOT_FIELDS), len(raw), 2):
            snap[text(raw[i])] = int(raw[i + 1])
        return cast(Snapshot, snap)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Retrieve a shared read's error, so that a read whose callers were all cancelled logs nothing."""
    if not future.cancelled():
        future.exception()


async def _over_partitions(parts: Sequence[Queue], ids: Sequence[str], oldest: int, by_part: Mapping[Queue, list[str]],
                           action: Callable[..., Any]) -> int:
    """A dead-letter ``action`` (requeue, purge) on a partitioned queue: the ids in their partitions,
    or the ``oldest`` n partition by partition; how many it took."""
    if ids:
        return sum([await action(part, ids=part_ids) for part, part_ids in by_part.items()])
    done = 0
    for part in parts:
        if done < oldest:
            done += await action(part, oldest=oldest - done)
    return done


def heartbeat_call(queue: str, worker_id: str, info: dict[str, Any], ttl_s: float,
                   counts: dict[str, int] | None = None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of heartbeat.lua, for the async :meth:`Queue.heartbeat` and the heartbeat thread.

    ``counts`` are increments of the metrics hash the worker gathered since its last beat
    (the event loop's blocks), so reporting them costs no round trip of its own.
    """
    args: list[Any] = [worker_id, int(ttl_s * 1000), orjson.dumps(counts or {})]
    for field, value in info.items():
        args += [field, value]
    keys = QueueKeys(queue)
    return [keys.workers, keys.worker_info(worker_id), keys.metrics, keys.cancels(worker_id)], args


@dataclass(frozen=True, slots=True)
class Beat:
    """heartbeat.lua's reply."""

    now_ms: int
    #: False when the worker was not registered: its first beat, or it was taken for dead.
    known: bool
    #: Tasks it holds whose cancel was asked for and that have not ended (docs/cancel.md).
    cancels: tuple[str, ...] = ()


def beat_of(raw: Sequence[Any]) -> Beat:
    """heartbeat.lua's reply as a :class:`Beat` (for the async and the blocking heartbeat alike)."""
    return Beat(int(raw[0]), raw[1] == 1, tuple(text(i) for i in raw[2:]))


def _iso(ms: bytes | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw else None


def record_of(task_id: str, raw: dict[Any, Any]) -> TaskInfo:
    """A task hash as read by HGETALL, as the API's view; raise TaskNotFound when empty."""
    if not raw:
        raise TaskNotFound(task_id)
    return decode_record(task_id, {text(k): v for k, v in raw.items()})


def decode_record(task_id: str, f: dict[str, Any]) -> TaskInfo:
    """Turn a task hash into the API's view of it."""
    result = f.get("result")
    return TaskInfo(
        task_id=task_id,
        type=f.get("type", b"").decode(),
        state=f.get("state", b"").decode(),
        attempts=int(f.get("attempts", 0)),
        failures=int(f.get("failures", 0)),
        crashes=int(f.get("crashes", 0)),
        max_retries=int(f["max_retries"]) if f.get("max_retries") else None,
        payload=orjson.loads(f["payload"]) if f.get("payload") else None,
        result=orjson.loads(result) if result else None,
        last_error=_text(f.get("last_error")),
        reason=_text(f.get("reason")),
        worker=_text(f.get("worker")),
        priority=int(f["priority"]) if f.get("priority") else priorities.DEFAULT,
        key=_text(f.get("key")),
        enqueued_at=_iso(f.get("enqueued_at")),
        started_at=_iso(f.get("started_at")),
        finished_at=_iso(f.get("finished_at")),
        progress=float(f["progress"]) if f.get("progress") else None,
        progress_message=_text(f.get("progress_message")),
        progress_at=_iso(f.get("progress_at")),
        cancel_requested_at=_iso(f.get("cancel_requested_at")),
        runs=runs_of(f.get("runs")),
    )


def runs_of(raw: bytes | None) -> list[RunEntry]:
    """A record's run history (its field ``runs``) as the API shows it; [] when it has none or it is unreadable."""
    if not raw:
        return []
    try:
        entries = orjson.loads(raw)
        return [RunEntry(attempt=int(e.get("attempt") or 0), at=_iso(str(e["at"]).encode()) if e.get("at") else None,
                         worker=e.get("worker") or None, outcome=str(e.get("outcome", "")),
                         error=e.get("error") or None, state=str(e.get("state", "")))
                for e in entries if isinstance(e, dict)]
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError):  # not written by note_run
        return []
