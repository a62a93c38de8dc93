"""Prometheus exposition and latency percentiles, built from the queue's Redis hashes.

Workers count outcomes and histogram buckets into Redis inside the settle script, so the
families here are read from Redis at scrape time (never from counters of this process):
one scrape of any monitor sees the whole fleet.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from reliq import memory, schedules
from reliq.formats import Metric as Kind
from reliq.formats import metric, split_metric
from reliq.histogram import BOUNDS_S
from reliq.pausing import QUEUE_FIELD
from reliq.queue import Queue, Snapshot
from reliq.schedules import ScheduleInfo

#: The labels of every per-queue family: the queue, and, once a scrape shows a partitioned queue, its
#: partition (reliq/partitions.py; "0" for a queue of one, so a sum by queue is its total either way).
#: Without one the families are what they always were.
QUEUE_LABELS = ["queue", "partition"]
#: Buckets per histogram: one per bound, then +Inf.
N_BUCKETS = len(BOUNDS_S) + 1
#: Depth states of reliq_queue_depth, with the Snapshot field each comes from.
DEPTHS = {"pending": "pending", "processing": "processing", "delayed": "delayed", "dead": "dead_letter"}
#: Queue-wide counters of the stats hash exported as reliq_tasks_<name>_total.
COUNTER_HELP = {
    "enqueued": "Tasks accepted into the queue.",
    "retried": "Failed attempts scheduled for another try.",
    "dead": "Tasks moved to the dead-letter queue.",
    "recovered": "Tasks taken back from workers that died (crash recovery).",
    "requeued": "Dead-lettered tasks sent back to pending.",
    "cancelled": "Tasks that ended cancelled, before they started or while they ran.",
    "cancelled_running": "Tasks cancelled while they ran: stopped by their worker (also in cancelled).",
    "snoozed": "Runs that raised reliq.Snooze: run again later, their attempt not spent.",
    "unique_hits": "Enqueues answered with the id of a live task of the same type and unique key.",
    "rate_limited": "Runs that raised reliq.RateLimited: back to pending, attempt not spent, type or key held.",
    "refused_memory": "Tasks refused (507) because Redis was out of memory or past --max-memory-ratio.",
    "trimmed": "Succeeded records deleted past their queue's (or type's) keep_succeeded count.",
    "expired": "Succeeded records deleted once older than their queue's (or type's) result_ttl.",
}
#: Periodic-schedule counters of the stats hash exported as reliq_<name>_total (reliq/schedules.py).
SCHEDULE_COUNTER_HELP = {
    "schedule_slots_enqueued": ("schedule_enqueued", "Slots of periodic schedules enqueued (each slot once)."),
    "schedule_slots_skipped": ("schedule_skipped",
                               "Slots of periodic schedules missed by over a minute and skipped by their policy."),
}
#: Dead-letter counters of the stats hash exported as reliq_<name>_total.
DEAD_COUNTER_HELP = {
    "dead_evicted": "Dead tasks evicted past the dead-letter cap into the archive.",
    "dead_archive_dropped": "Archived dead tasks deleted past the archive's own cap (lost for good).",
    "dead_imported": "Dead tasks created by `reliq dlq import`.",
}


@dataclass
class TypeMetrics:
    """What the settle script recorded for one task type."""

    outcomes: dict[str, int] = field(default_factory=dict)
    wait: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    wait_sum_ms: int = 0
    run: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    run_sum_ms: int = 0


def parse_metrics(raw: dict[str, int]) -> dict[str, TypeMetrics]:
    """Decode the task fields of the metrics hash (their kinds: :class:`reliq.formats.Metric`) by type."""
    by_type: dict[str, TypeMetrics] = {}
    for key, value in raw.items():
        kind, ttype, last = split_metric(key)
        if kind == Kind.WAIT_SUM:
            by_type.setdefault(ttype, TypeMetrics()).wait_sum_ms += value
        elif kind == Kind.RUN_SUM:
            by_type.setdefault(ttype, TypeMetrics()).run_sum_ms += value
        elif kind == Kind.RUNS:
            m = by_type.setdefault(ttype, TypeMetrics())
            m.outcomes[last] = m.outcomes.get(last, 0) + value
        elif kind in (Kind.WAIT, Kind.RUN) and last.isdigit() and int(last) < N_BUCKETS:
            m = by_type.setdefault(ttype, TypeMetrics())
            (m.wait if kind == Kind.WAIT else m.run)[int(last)] += value
    return by_type


@dataclass
class LoopBlocks:
    """Blocks of the workers' event loops past the warning threshold (counted by the heartbeats)."""

    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    sum_ms: int = 0

    @property
    def count(self) -> int:
        """How many blocks."""
        return sum(self.buckets)


def parse_loop_blocks(raw: dict[str, int]) -> LoopBlocks:
    """The loop-block histogram of the metrics hash (``lb|bucket`` counts and the ``lbs`` sum)."""
    blocks = LoopBlocks(sum_ms=raw.get(metric(Kind.BLOCKED_SUM), 0))
    for key, value in raw.items():
        kind, _, last = split_metric(key)
        if kind == Kind.BLOCKS and last.isdigit() and int(last) < N_BUCKETS:
            blocks.buckets[int(last)] += value
    return blocks


def merge_buckets(metrics: dict[str, TypeMetrics], which: str) -> list[int]:
    """Bucket counts of ``which`` ("wait" or "run") summed over every type."""
    total = [0] * N_BUCKETS
    for m in metrics.values():
        for i, n in enumerate(getattr(m, which)):
            total[i] += n
    return total


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile, in seconds, of per-bucket (not cumulative) counts; None when empty.

    Interpolates linearly inside the bucket holding the rank, as Prometheus's
    histogram_quantile does; a rank in the +Inf bucket answers the largest finite bound.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(BOUNDS_S):
                return BOUNDS_S[-1]
            low = BOUNDS_S[i - 1] if i else 0.0
            return low + (BOUNDS_S[i] - low) * max(0.0, rank - seen) / n
        seen += n
    return BOUNDS_S[-1]


class BucketPercentiles(TypedDict):
    """p50/p95/p99 of one histogram in seconds (None without observations), and its count."""

    p50: float | None
    p95: float | None
    p99: float | None
    count: int


def bucket_percentiles(counts: Sequence[int]) -> BucketPercentiles:
    """p50, p95 and p99 of per-bucket counts."""
    return BucketPercentiles(p50=quantile(counts, 0.5), p95=quantile(counts, 0.95), p99=quantile(counts, 0.99),
                       count=sum(counts))


class WorkerView(TypedDict):
    """One worker process as the monitor shows it."""

    id: str
    host: str
    pid: int
    queue: str
    concurrency: int
    in_flight: int
    processed: int
    loop_blocks: int
    loop_blocked_s: float
    started_at: int
    last_seen_ms: int
    heartbeat_age_s: float


async def read_workers(queue: Queue) -> list[WorkerView]:
    """Every registered worker with its info and heartbeat age, by the Redis clock."""
    now, workers = await queue.workers_info()
    views = []
    for worker_id, beat, info in workers:
        views.append(WorkerView(
            id=worker_id, host=info.get("host", "?"), pid=_int(info.get("pid")), queue=info.get("queue", queue.name),
            concurrency=_int(info.get("concurrency")), in_flight=_int(info.get("in_flight")),
            processed=_int(info.get("processed")), loop_blocks=_int(info.get("loop_blocks")),
            loop_blocked_s=_int(info.get("loop_blocked_ms")) / 1000, started_at=_int(info.get("started_at")),
            last_seen_ms=beat, heartbeat_age_s=max(0.0, (now - beat) / 1000),
        ))
    return views


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass
class QueueReading:
    """Everything /metrics reports about one queue, read from Redis."""

    snapshot: Snapshot
    types: dict[str, TypeMetrics]
    in_flight: int
    slots: int
    memory: memory.MemoryReading
    loop_blocks: LoopBlocks = field(default_factory=LoopBlocks)
    schedules: list[ScheduleInfo] = field(default_factory=list)
    #: The partition read (reliq/partitions.py; None for a queue of one partition).
    partition: int | None = None


def _queue_labels(readings: Sequence[QueueReading]) -> list[str]:
    """:data:`QUEUE_LABELS`, or the queue alone while no reading is of a partition."""
    return QUEUE_LABELS if any(r.partition is not None for r in readings) else QUEUE_LABELS[:1]


def _values(r: QueueReading, labels: Sequence[str]) -> list[str]:
    """A reading's values of ``labels`` (from :func:`_queue_labels`)."""
    return [r.snapshot["queue"], str(r.partition or 0)][:len(labels)]


async def read_all(queue: Queue) -> list[QueueReading]:
    """One reading a partition of ``queue`` (one for a queue of one partition), each named by the queue."""
    parts = await queue.parts()
    if len(parts) == 1:
        return [await read(queue)]
    readings = [await read(part) for part in parts]
    for i, reading in enumerate(readings):
        reading.snapshot["queue"], reading.partition = queue.name, i
    return readings


async def read(queue: Queue) -> QueueReading:
    """Read one queue's snapshot, metrics hash and worker infos."""
    snapshot = await queue.snapshot()
    raw = await queue.metric_counts()
    workers = await read_workers(queue)
    return QueueReading(snapshot, parse_metrics(raw), in_flight=sum(w["in_flight"] for w in workers),
                        slots=sum(w["concurrency"] for w in workers), memory=await memory.read(queue.redis),
                        loop_blocks=parse_loop_blocks(raw), schedules=await schedules.read(queue))


def _histogram(name: str, doc: str, readings: Sequence[QueueReading], which: str) -> HistogramMetricFamily:
    ql = _queue_labels(readings)
    family = HistogramMetricFamily(name, doc, labels=[*ql, "type"])
    for r in readings:
        for ttype, m in sorted(r.types.items()):
            counts: list[int] = getattr(m, which)
            cumulative, buckets = 0, []
            for bound, n in zip([*map(_le, BOUNDS_S), "+Inf"], counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([*_values(r, ql), ttype], buckets, getattr(m, which + "_sum_ms") / 1000)
    return family


def _loop_histogram(readings: Sequence[QueueReading]) -> HistogramMetricFamily:
    ql = _queue_labels(readings)
    family = HistogramMetricFamily(
        "reliq_event_loop_blocked_seconds",
        "Times a handler held a worker's event loop past the warning threshold, and for how long.",
        labels=ql)
    for r in readings:
        cumulative, buckets = 0, []
        for bound, n in zip([*map(_le, BOUNDS_S), "+Inf"], r.loop_blocks.buckets, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        family.add_metric(_values(r, ql), buckets, r.loop_blocks.sum_ms / 1000)
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def families(readings: Sequence[QueueReading]) -> Iterator[Metric]:
    """Every metric family of the given queues."""
    ql = _queue_labels(readings)
    depth = GaugeMetricFamily("reliq_queue_depth", "Tasks in the queue by state.", labels=[*ql, "state"])
    lag = GaugeMetricFamily("reliq_queue_lag_seconds", "Age of the oldest pending task.", labels=ql)
    by_priority = GaugeMetricFamily("reliq_queue_pending_priority",
                                    "Pending tasks by priority (0 lowest, 9 highest; held tasks of paused types "
                                    "in none).", labels=[*ql, "priority"])
    workers = GaugeMetricFamily("reliq_workers", "Worker processes with a live heartbeat.", labels=ql)
    in_flight = GaugeMetricFamily("reliq_tasks_in_flight", "Tasks running on workers now.", labels=ql)
    slots = GaugeMetricFamily("reliq_worker_slots", "Sum of the workers' concurrency.", labels=ql)
    mem_used = GaugeMetricFamily("reliq_redis_memory_used_bytes", "used_memory of the Redis holding the queue.",
                                 labels=ql)
    mem_max = GaugeMetricFamily("reliq_redis_memory_max_bytes",
                                "maxmemory of the Redis holding the queue (0 = no limit).", labels=ql)
    tasks = CounterMetricFamily("reliq_tasks", "Task runs settled, by type and outcome.",
                                labels=[*ql, "type", "outcome"])
    counters = {name: CounterMetricFamily(f"reliq_tasks_{name}", doc, labels=ql)
                for name, doc in COUNTER_HELP.items()}
    counters |= {name: CounterMetricFamily(f"reliq_{name}", doc, labels=ql)
                 for name, doc in DEAD_COUNTER_HELP.items()}
    dead_age = GaugeMetricFamily("reliq_dead_letter_oldest_age_seconds",
                                 "Seconds since the oldest task in the dead-letter queue died (0 when empty).",
                                 labels=ql)
    archived = GaugeMetricFamily("reliq_dead_archived", "Dead tasks held in the archive (evicted past the cap).",
                                 labels=ql)
    paused = GaugeMetricFamily("reliq_queue_paused",
                               "1 while the queue (type=\"*\") or a task type of it is paused, else 0.",
                               labels=[*ql, "type"])
    paused_for = GaugeMetricFamily("reliq_queue_paused_seconds",
                                   "How long the queue (type=\"*\") or a task type of it has been paused (0: not).",
                                   labels=[*ql, "type"])
    yield from _schedule_families(readings)
    waiting = GaugeMetricFamily("reliq_queue_flow_waiting",
                                "Pending tasks waiting on flow control (counted in pending too): set aside for a rate "
                                "limit's token or a hold (limited), in their keys' lists (keyed).",
                                labels=[*ql, "where"])
    for r in readings:
        q, snap = _values(r, ql), r.snapshot
        waiting.add_metric([*q, "limited"], snap["limited"])
        waiting.add_metric([*q, "keyed"], snap["keyed"])
        whole = snap["paused"]["queue"]
        paused.add_metric([*q, QUEUE_FIELD], 1 if whole else 0)
        paused_for.add_metric([*q, QUEUE_FIELD], whole["paused_s"] if whole else 0.0)
        for ttype, pause in sorted(snap["paused"]["types"].items()):
            if not pause["resuming"]:
                paused.add_metric([*q, ttype], 1)
                paused_for.add_metric([*q, ttype], pause["paused_s"])
        for state, key in DEPTHS.items():
            depth.add_metric([*q, state], snap[key])  # type: ignore[literal-required]
        lag.add_metric(q, snap["lag_s"])
        for priority, n in snap["pending_by_priority"].items():
            by_priority.add_metric([*q, priority], n)
        dead_age.add_metric(q, snap["dead_oldest_age_s"])
        archived.add_metric(q, snap["dead_archived"])
        workers.add_metric(q, snap["workers"])
        in_flight.add_metric(q, r.in_flight)
        slots.add_metric(q, r.slots)
        mem_used.add_metric(q, r.memory.used)
        mem_max.add_metric(q, r.memory.max)
        for ttype, m in sorted(r.types.items()):
            for outcome, n in sorted(m.outcomes.items()):
                tasks.add_metric([*q, ttype, outcome], n)
        for name, family in counters.items():
            family.add_metric(q, snap[name])  # type: ignore[literal-required]
    yield from (depth, lag, by_priority, waiting, paused, paused_for, dead_age, archived, workers, in_flight, slots,
                mem_used, mem_max, tasks, *counters.values())
    yield _histogram("reliq_task_wait_seconds", "Time from queued to started.", readings, "wait")
    yield _histogram("reliq_task_run_seconds", "Time a handler ran.", readings, "run")
    yield _loop_histogram(readings)


def _schedule_families(readings: Sequence[QueueReading]) -> Iterator[Metric]:
    """Periodic schedules: how many (running, paused), each one's next slot, slots enqueued and skipped."""
    ql = _queue_labels(readings)
    count = GaugeMetricFamily("reliq_schedules", "Periodic schedules of the queue, running or paused.",
                              labels=[*ql, "state"])
    next_run = GaugeMetricFamily("reliq_schedule_next_run_timestamp_seconds",
                                 "When a running schedule's next slot is due (in the past: no worker enqueues it).",
                                 labels=[*ql, "schedule"])
    counters = {name: CounterMetricFamily(f"reliq_{name}", doc, labels=ql)
                for name, (_, doc) in SCHEDULE_COUNTER_HELP.items()}
    for r in readings:
        q = _values(r, ql)
        paused = sum(1 for v in r.schedules if v["paused"])
        count.add_metric([*q, "running"], len(r.schedules) - paused)
        count.add_metric([*q, "paused"], paused)
        for v in r.schedules:
            if v["next_run_ms"] is not None:
                next_run.add_metric([*q, v["name"]], v["next_run_ms"] / 1000)
        for name, (field_, _) in SCHEDULE_COUNTER_HELP.items():
            counters[name].add_metric(q, r.snapshot[field_])  # type: ignore[literal-required]
    yield from (count, next_run, *counters.values())


class QueueCollector(Collector):
    """The families of queue readings taken before the scrape (collect() cannot await)."""

    def __init__(self, readings: Sequence[QueueReading]) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        return families(self.readings)


def exposition(*collectors: Collector) -> bytes:
    """The Prometheus text format of what ``collectors`` collect, through one registry of this scrape.

    One registry: each family once with its HELP and TYPE, whichever collector it comes
    from, and a family two collectors both claimed would be refused, not pasted twice.
    """
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return bytes(generate_latest(registry))


async def render(queues: Sequence[Queue], *more: Collector) -> bytes:
    """Read ``queues`` from Redis; their Prometheus exposition, and ``more`` collectors' families after."""
    return exposition(QueueCollector([r for q in queues for r in await read_all(q)]), *more)

