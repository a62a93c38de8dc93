"""The queue core: every state transition of a task, each one Lua script call.

Producers, workers, the API and the monitor all go through ``Queue`` (blocking
producers through its twin, :class:`reliq.syncqueue.SyncQueue`); none of them touches
Redis keys directly, and ``tests/test_layout.py`` keeps it so.

This module holds the task lifecycle (validation, enqueue, claim, settle, recovery);
``Queue``'s reads and operators' actions are in :mod:`reliq.queue_reads` and
:mod:`reliq.queue_admin`, its partition routing in :mod:`reliq.queue_base`. What they
define is re-exported here: ``from reliq.queue import ...`` is the way to import it.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from reliq import calls, partitions, priorities, tracing
from reliq.calls import text as text  # re-exported: most of reliq reads replies through reliq.queue
from reliq.errors import InvalidTask, NotReplicated, RedisFull
from reliq.formats import (
    CLAIM_HEAD,
    LISTPACK_VALUE,
    SEP,
    Code,
    Enqueued,
    Metric,
    RecordFormat,
    RunOutcome,
    TaskState,
    split_body,
    split_claimed,
)
from reliq.formats import END_STATES as END_STATES  # re-exported: the waiters read it here
from reliq.histogram import bucket
from reliq.ids import new_id
from reliq.keys import QueueKeys
from reliq.limits import check_key
from reliq.memory import TASK_BYTES, guard
from reliq.queue_admin import EDITS_KEPT as EDITS_KEPT  # re-exported, as the rest below
from reliq.queue_admin import ArchivedTask as ArchivedTask
from reliq.queue_admin import QueueAdmin
from reliq.queue_reads import COUNTERS as COUNTERS
from reliq.queue_reads import READ_CHUNK as READ_CHUNK
from reliq.queue_reads import Browsed as Browsed
from reliq.queue_reads import RunEntry as RunEntry
from reliq.queue_reads import Snapshot as Snapshot
from reliq.queue_reads import Source as Source
from reliq.queue_reads import TaskInfo as TaskInfo
from reliq.queue_reads import decode_record as decode_record
from reliq.queue_reads import record_of as record_of
from reliq.queue_reads import runs_of as runs_of
from reliq.scripts import Scripts
from reliq.settings import WHITESPACE, Retention, Settings

#: Bounds on what a producer may ask for, so one bad request cannot park a task forever.
MAX_TYPE_LEN = 200
MAX_RETRIES_LIMIT = 100
MAX_DELAY_S = 366 * 24 * 3600.0
MAX_TIMEOUT_S = 24 * 3600.0
MAX_UNIQUE_KEY = 200

#: States a task record can be in (the ``state`` field of GET /task/{id}).
STATES = tuple(TaskState)


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
    #: How its record holds its body: its settle writes the record back in that format.
    record_format: RecordFormat = RecordFormat.BODY


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


def _record(t: Claimed, progressed: Collection[str]) -> str:
    """SETTLE_FIELDS' ``record`` of ``t``: 's' (format 2, a listpack), '2' (format 2, Redis tells), '1' (format 1)."""
    if t.record_format == RecordFormat.FIELDS:
        return "1"
    return "s" if known_small(t) and t.id not in progressed else "2"


@dataclass(slots=True)
class Outcome:
    """What became of one run of a claimed task, for the batched settle."""

    task: Claimed
    outcome: RunOutcome
    text: str  # JSON result for ok, the error otherwise
    run_ms: int
    retry_delay_ms: int = 0


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


class Queue(QueueAdmin):
    """One named queue on one Redis: enqueue, claim, settle, recover, inspect.

    A queue as producers name it (``partition`` None) may be partitioned
    (reliq/partitions.py): it then reads its partition map now and then, sends each
    enqueue to one partition and each task id to the partition it names, and reads as
    the sum of its partitions. A partition is a ``Queue`` too, named by its hash tag,
    with ``partition`` its index: it is the one place its keys are used, as a queue of
    one partition is (the default: its own only partition).

    This class is the task lifecycle; the partition routing (:mod:`reliq.queue_base`),
    the reads (:mod:`reliq.queue_reads`) and the operators' actions
    (:mod:`reliq.queue_admin`) are the classes it inherits from.
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
        self.record_format: RecordFormat | None = None
        self._scripts = Scripts(redis)
        self._priority_step = priorities.step_ms(settings.priority_aging)
        #: The queue's partitions, as last read (reliq/partitions.py).
        self.layout: partitions.Layout[Queue] = partitions.Layout(
            self, lambda tag, i: Queue(redis, settings, tag, partition=i, of=self.name), fixed=partition is not None)

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
        batch = calls.enqueue_batch(specs, self.settings.max_retries)
        args = calls.enqueue_args(self.settings, batch, self.record_format)
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
        results = calls.enqueued(raw, specs, self.name, self.settings)
        if replicas and acked < replicas:
            raise NotReplicated(results, int(acked), replicas)
        return results

    async def enqueue(self, type: str, payload: Any = None, **options: Any) -> str:
        """Validate and enqueue one task; return its id."""
        spec = make_spec(type, payload, trace=tracing.current(), **options)
        [(task_id, _)] = await self.enqueue_specs([spec])
        return task_id

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
        # Positional and in one comprehension: this parse was a tenth of a worker's CPU. The
        # names unpacked are formats.CLAIMED, in order, then type, key and body
        # (tests/test_formats.py checks).
        tasks = [Claimed(i.decode(), t.decode(), p, int(a or 0), int(f or 0), m, int(c or 0), to, int(q or now), now,
                         self.name, tr, u, k.decode(), RecordFormat.FIELDS if r else RecordFormat.BODY)
                 for i, a, q, f, c, r, t, k, b in map(split_claimed, raw[CLAIM_HEAD:])
                 for p, m, to, tr, u in (split_body(b),)]
        return Take(tasks, raw[0] == Code.SUSPECT_WAITS, raw[0] == Code.PAUSED, int(raw[2]) / 1000)

    def _claim_keys(self, worker_id: str) -> list[str]:
        k = self.keys
        return [k.pending, k.processing(worker_id), k.task_prefix, k.workers, k.paused, k.held_prefix,
                k.priority_prefix, k.priorities, k.limits, k.tat, k.limited_prefix, k.limited_due, *calls.group_keys(k)]

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
        plain: list[object] = []  # the plain successes: settle.lua's ARGV[7]
        ok = RunOutcome.OK
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
            more = f"{t.max_retries}{s}{o.retry_delay_ms}{s}{wait_ms}{s}{o.run_ms}{s}{wait_b}{s}{run_b}"
            record = _record(t, progressed)
            if o.outcome == ok and record == "s" and not t.unique and not t.key:
                plain += (t.id, t.type, o.text, more)  # flat: formats.SETTLE_OK
            else:
                batch += (t.id, t.type, o.text, more, o.outcome, t.unique, t.key, record)  # formats.SETTLE_FIELDS
            ty = t.type
            sums.update((f"{runs}{ty}{s}{o.outcome!s}", f"{wait}{ty}{s}{wait_b}", f"{run}{ty}{s}{run_b}"))
            sums[wait_sum + ty] += wait_ms
            sums[run_sum + ty] += o.run_ms
            if retention and t.type in retention and t.type not in own:
                own[t.type] = retention[t.type].limits(self.settings)
        args = [int(self.settings.result_ttl * 1000), orjson.dumps(batch), orjson.dumps(sums),
                self.settings.keep_succeeded, orjson.dumps(own), orjson.dumps(list(progressed)), orjson.dumps(plain)]
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


def heartbeat_key(queue: str) -> str:
    """A key of ``queue``'s heartbeat.lua call: where a cluster routes its beat (a queue's keys share a slot)."""
    return QueueKeys(queue).workers


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
