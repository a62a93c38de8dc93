"""The monitor's short memory: one reading of the queue a second, in a ring buffer.

Rates (tasks/s) and the dashboard's 15-minute charts come from differences between
these readings, and recent latency percentiles from differences of the histogram
buckets. Nothing is persisted: history starts when the monitor starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from reliq import memory
from reliq.connection import UNAVAILABLE, describe_outage
from reliq.formats import RunOutcome
from reliq.monitor.metrics import (
    N_BUCKETS,
    BucketPercentiles,
    TypeMetrics,
    WorkerView,
    bucket_percentiles,
    merge_buckets,
    parse_metrics,
    read_workers,
)
from reliq.queue import Queue, Snapshot

log = logging.getLogger(__name__)

#: Seconds of history kept (the dashboard charts' span).
HISTORY_S = 15 * 60
#: Window of the rates reported by /stats and the dashboard's numbers.
RATE_WINDOW_S = 10
#: Window of the latency percentiles.
LATENCY_WINDOW_S = 60
#: Counters turned into per-second rates.
RATED = ("enqueued", "succeeded", "failed", "dead")
#: Task types the per-type table shows at most (the busiest first).
MAX_TYPES = 25
#: Fields of a history point, in order (GET /history sends them to the page as ``fields``).
POINT_FIELDS = ("t", "pending", "processing", "delayed", "dead_letter", "succeeded_s", "failed_s", "enqueued_s")


@dataclass
class Sample:
    """One reading: when (monitor clock, s), the snapshot, merged latency buckets, workers."""

    t: float
    snapshot: Snapshot
    wait: list[int]
    run: list[int]
    workers: list[WorkerView]
    point: list[float]
    #: Sum of every run's duration so far, ms (with ``run``, the mean run time for autoscaling).
    run_ms: int = 0
    #: Redis's used memory and maxmemory at this reading.
    memory: memory.MemoryReading | None = None


class TypeView(TypedDict):
    """One task type over the latency window: rates, failure share, run and wait percentiles."""

    type: str
    succeeded_s: float
    failed_s: float
    failure_ratio: float | None
    run: BucketPercentiles
    wait: BucketPercentiles
    run_all: BucketPercentiles
    runs_total: int
    failed_total: int


def _type_view(name: str, new: TypeMetrics, old: TypeMetrics, seconds: float) -> TypeView:
    ok = max(0, new.outcomes.get(RunOutcome.OK, 0) - old.outcomes.get(RunOutcome.OK, 0))
    snoozed = max(0, new.outcomes.get(RunOutcome.SNOOZE, 0) - old.outcomes.get(RunOutcome.SNOOZE, 0))  # not failures
    runs = sum(_minus(new.run, old.run))
    failed = max(0, runs - ok - snoozed)
    total = sum(new.outcomes.values())
    return TypeView(
        type=name,
        succeeded_s=round(ok / seconds, 3) if seconds > 0 else 0.0,
        failed_s=round(failed / seconds, 3) if seconds > 0 else 0.0,
        failure_ratio=round(failed / runs, 4) if runs else None,
        run=bucket_percentiles(_minus(new.run, old.run)),
        wait=bucket_percentiles(_minus(new.wait, old.wait)),
        run_all=bucket_percentiles(new.run),
        runs_total=total,
        failed_total=total - new.outcomes.get(RunOutcome.OK, 0) - new.outcomes.get(RunOutcome.SNOOZE, 0),
    )


def _rate(new: Snapshot, old: Snapshot, name: str, seconds: float) -> float:
    # A counter that went down was reset by hand: report 0 rather than a negative rate.
    delta = new[name] - old[name]  # type: ignore[literal-required]
    return round(max(0, delta) / seconds, 3) if seconds > 0 else 0.0


def _minus(new: Sequence[int], old: Sequence[int]) -> list[int]:
    return [max(0, a - b) for a, b in zip(new, old, strict=True)]


class Sampler:
    """Reads a queue every ``interval`` seconds and keeps ``keep`` readings."""

    def __init__(self, queue: Queue, interval: float = 1.0, keep: int = HISTORY_S) -> None:
        self.queue = queue
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=keep)
        # Per-type readings are bulky, so only the latency window's worth is kept.
        self._types: deque[tuple[float, dict[str, TypeMetrics]]] = deque(
            maxlen=int(LATENCY_WINDOW_S / interval) + 2)
        self.started = time.time()
        self.seq = 0
        self.error: str | None = None
        self.closed = asyncio.Event()
        self._tick = asyncio.Condition()

    async def sample_once(self) -> Sample:
        """Take one reading and append it."""
        snapshot = await self.queue.snapshot()
        types = parse_metrics(await self.queue.metric_counts())
        workers = await read_workers(self.queue)
        mem = await memory.read(self.queue.redis)
        t = time.time()
        prev = self.samples[-1] if self.samples else None
        point: list[float] = [round(t, 3), snapshot["pending"], snapshot["processing"],
                              snapshot["delayed"], snapshot["dead_letter"]]
        for name in ("succeeded", "failed", "enqueued"):
            point.append(_rate(snapshot, prev.snapshot, name, t - prev.t) if prev else 0.0)
        sample = Sample(t, snapshot, merge_buckets(types, "wait"), merge_buckets(types, "run"), workers, point,
                        run_ms=sum(m.run_sum_ms for m in types.values()), memory=mem)
        self.samples.append(sample)
        self._types.append((t, types))
        return sample

    async def tick(self) -> None:
        """Sample once (recording, not raising, a Redis outage) and wake the listeners."""
        try:
            await self.sample_once()
            self.error = None
        except UNAVAILABLE as exc:
            if self.error is None:
                log.warning("monitor cannot read Redis: %s", describe_outage(exc))
            self.error = f"Redis is unavailable: {exc}"
        async with self._tick:
            self.seq += 1
            self._tick.notify_all()

    async def run(self) -> None:
        """Sample every interval until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("monitor sampler failed; carrying on")
            await asyncio.sleep(max(0.05, self.interval - (time.monotonic() - started)))

    async def wait_after(self, seq: int, timeout: float) -> int:
        """Wait until a tick newer than ``seq`` (or ``timeout``, or close); return the newest seq."""
        async with self._tick:
            if self.seq <= seq and not self.closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._tick.wait_for(lambda: self.seq > seq or self.closed.is_set()),
                                           timeout)
            return self.seq

    async def close(self) -> None:
        """Release everyone waiting (the server is shutting down)."""
        self.closed.set()
        async with self._tick:
            self._tick.notify_all()

    def _ago(self, seconds: float) -> Sample | None:
        """The oldest sample at most ``seconds`` older than the newest one."""
        if not self.samples:
            return None
        newest = self.samples[-1].t
        for s in self.samples:
            if newest - s.t <= seconds + self.interval / 2:
                return s
        return self.samples[-1]

    def rates(self, window: float = RATE_WINDOW_S) -> dict[str, float]:
        """Per-second rates of the counters in RATED over the last ``window`` seconds."""
        old = self._ago(window)
        if old is None or old is self.samples[-1]:
            return dict.fromkeys(RATED, 0.0)
        new = self.samples[-1]
        return {name: _rate(new.snapshot, old.snapshot, name, new.t - old.t) for name in RATED}

    def latency(self, window: float = LATENCY_WINDOW_S) -> dict[str, Any]:
        """Wait and run p50/p95/p99 over the last ``window`` seconds and since counting began."""
        if not self.samples:
            empty = bucket_percentiles([0] * N_BUCKETS)
            return {"window_s": window, "wait": empty, "run": empty, "wait_all": empty, "run_all": empty}
        new = self.samples[-1]
        old = self._ago(window) or new
        recent: dict[str, BucketPercentiles] = {
            "wait": bucket_percentiles(_minus(new.wait, old.wait)),
            "run": bucket_percentiles(_minus(new.run, old.run)),
        }
        return {"window_s": window, **recent, "wait_all": bucket_percentiles(new.wait),
                "run_all": bucket_percentiles(new.run)}

    def types(self, window: float = LATENCY_WINDOW_S) -> list[TypeView]:
        """The busiest task types over the last ``window`` seconds (then the most run ever)."""
        if not self._types:
            return []
        new_t, new = self._types[-1]
        old_t, old = next(((t, m) for t, m in self._types if new_t - t <= window + self.interval / 2),
                          self._types[-1])
        views = [_type_view(name, m, old.get(name, TypeMetrics()), new_t - old_t) for name, m in new.items()]
        views.sort(key=lambda v: (-(v["succeeded_s"] + v["failed_s"]), -v["runs_total"], v["type"]))
        return views[:MAX_TYPES]

    def history(self) -> dict[str, Any]:
        """Every kept point (see POINT_FIELDS) and when the monitor started keeping them."""
        return {"since": self.started, "interval_s": self.interval, "fields": POINT_FIELDS,
                "points": [s.point for s in self.samples]}

    def event(self) -> dict[str, Any]:
        """What the dashboard gets each second: the newest reading, rates, latency, workers."""
        if not self.samples:
            return {"seq": self.seq, "error": self.error or "no reading yet"}
        s = self.samples[-1]
        stats = {**s.snapshot, "rates": self.rates(), "redis_memory": s.memory.view() if s.memory else None}
        return {"seq": self.seq, "error": self.error, "t": s.t, "stats": stats,
                "latency": self.latency(), "types": self.types(), "workers": s.workers, "point": s.point}
