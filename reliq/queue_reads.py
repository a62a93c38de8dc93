"""Reading a queue: task records (one, or many in chunks), listings, browsing, counts, the snapshot.

Part of :class:`reliq.queue.Queue` (see :mod:`reliq.queue_base`); the types its reads
return are defined here and re-exported by :mod:`reliq.queue`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict, cast

import orjson
from redis.asyncio.client import Pipeline

from reliq import partitions, pausing, priorities
from reliq.calls import text
from reliq.errors import InvalidTask, TaskNotFound
from reliq.formats import SNAPSHOT_FIELDS, GroupField, TaskState, payload_of
from reliq.keys import group_id
from reliq.pausing import PauseView
from reliq.queue_base import QueueBase

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
    #: None, as payload, once a succeeded record is compact (docs/memory.md).
    max_retries: int | None
    payload: Any
    result: Any
    last_error: str | None
    reason: str | None
    worker: str | None
    #: 0 (lowest) to 9 (highest), 5 when the task named none.
    priority: int
    #: The task's key (docs/flow-control.md); None without one (and once a succeeded record of format 1 is compact).
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


class QueueReads(QueueBase):
    """The reads of :class:`reliq.queue.Queue`: none changes a task."""

    async def get(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raise TaskNotFound when there is none."""
        where = await self.locate(task_id)
        return record_of(task_id, await where.redis.hgetall(where.keys.task(task_id)))

    async def live_workers(self) -> int:
        """Workers whose last heartbeat is within the lease (by the Redis clock)."""
        sec, usec = await self.redis.time()
        now = sec * 1000 + usec // 1000
        return int(await self.redis.zcount(self.keys.workers, now - int(self.settings.lease * 1000), "+inf"))

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
    payload, max_retries = payload_of(f)
    return TaskInfo(
        task_id=task_id,
        type=f.get("type", b"").decode(),
        state=f.get("state", b"").decode(),
        attempts=int(f.get("attempts", 0)),
        failures=int(f.get("failures", 0)),
        crashes=int(f.get("crashes", 0)),
        max_retries=max_retries,
        payload=orjson.loads(payload) if payload else None,
        result=orjson.loads(result) if result else None,
        last_error=_text(f.get("last_error")),
        reason=_text(f.get("reason")),
        worker=_text(f.get("worker")),
        priority=int(f["priority"]) if f.get("priority") else priorities.DEFAULT,
        key=_text(f.get("key")),
        enqueued_at=_iso(f.get("enqueued_at") or f.get("queued_at")),
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
