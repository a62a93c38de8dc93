"""How many worker processes would bring a queue's lag under a target: ``reliq_desired_workers``.

Pure arithmetic on two readings of the queue's counters, taken some seconds apart (the
monitor samples once a second). Little's law, L = λ·W, applied twice:

- **to the queue**: a task that arrives behind P pending tasks, served at X tasks/s,
  waits about P / X. For that wait to stay under the target T, the workers must serve
  ``X >= P / T``; to stop the backlog from growing, ``X >= λ`` (the arrival rate); and
  since the backlog a lag implies is λ·lag, a queue whose oldest task has waited
  ``lag`` needs ``X >= λ·lag / T`` even when its depth looks small (bursty arrivals).
  So the rate needed is ``max(λ, P / T, λ·lag / T)``.
- **to one worker process**: its C slots each hold a task for the mean run time R, so it
  completes at most ``μ = C / R`` tasks/s. When the queue had a backlog all through the
  window the workers were saturated, and their measured throughput per process is the
  truer μ (it includes CPU, Redis round trips, and the handlers' own limits).

``desired = ceil(needed / μ)``: 0 for an idle queue (nothing pending, nothing
arriving), at least 1 as soon as there is work. Smoothing and bounds (min/max replicas,
scale-down stabilisation) are the autoscaler's job, not this estimate's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reliq.monitor.sampler import Sample

#: The lag reliq aims to keep queues under unless told otherwise (``--target-lag``).
DEFAULT_TARGET_LAG_S = 10.0
#: Seconds of the monitor's samples the estimate looks back over: long enough to see
#: tasks of a minute finish, short enough to follow a change of load.
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a queue: monotonic counters and the state at time ``t`` (seconds)."""

    t: float
    #: Tasks that entered the ready queue so far: enqueued + retried + recovered + requeued.
    arrived: int
    #: Task runs finished so far (every settled attempt, whatever its outcome).
    runs: int
    #: Sum of those runs' durations, milliseconds.
    run_ms: int
    #: Tasks waiting in pending now, and the age of the oldest one, seconds.
    pending: int
    lag_s: float
    #: Live worker processes and their slots (summed concurrency).
    workers: int
    slots: int


@dataclass(frozen=True, slots=True)
class Estimate:
    """The rates behind a desired worker count, for /metrics and for explaining it."""

    arrival_rate: float  # λ, tasks/s
    service_rate: float  # X, tasks/s finished by all workers
    needed_rate: float  # max(λ, P/T, λ·lag/T)
    per_worker: float | None  # μ, tasks/s one process can finish (None: nothing to go by)
    saturated: bool  # a backlog all through the window: μ was measured, not inferred
    desired_workers: int


def estimate(old: Reading, new: Reading, target_lag_s: float = DEFAULT_TARGET_LAG_S) -> Estimate:
    """The worker processes that would keep ``new``'s queue under ``target_lag_s`` of lag."""
    if target_lag_s <= 0:
        raise ValueError("the target lag must be positive")
    span = new.t - old.t
    if span <= 0:
        raise ValueError("readings must be in time order")
    arrival = max(0, new.arrived - old.arrived) / span
    runs = max(0, new.runs - old.runs)
    service = runs / span
    needed = max(arrival, new.pending / target_lag_s, arrival * new.lag_s / target_lag_s)
    workers = (old.workers + new.workers) / 2
    saturated = old.pending > 0 and new.pending > 0 and workers > 0 and runs > 0
    per_worker: float | None = None
    if saturated:
        per_worker = service / workers
    elif runs and new.workers:
        # run times are whole milliseconds: a mean of 0 means under 1 ms, call it half of one
        mean_run_s = max(0.5, (new.run_ms - old.run_ms) / runs) / 1000
        slots = new.slots / new.workers
        per_worker = slots / mean_run_s
    return Estimate(arrival, service, needed, per_worker, saturated,
                    desired_workers(needed, per_worker, new.workers, busy=new.pending > 0 or arrival > 0))


def desired_workers(needed_rate: float, per_worker: float | None, current: int, *, busy: bool) -> int:
    """``ceil(needed_rate / per_worker)``; without a capacity to go by, keep what runs (at least 1)."""
    if not busy:
        return 0
    if per_worker is None or per_worker <= 0:
        return max(1, current)  # no finished run to measure by: no evidence to scale on
    return max(1, math.ceil(needed_rate / per_worker - 1e-9))


def reading(sample: Sample) -> Reading:
    """The counters of one of the monitor's samples, as the estimate needs them."""
    snap = sample.snapshot
    return Reading(
        t=sample.t,
        arrived=snap["enqueued"] + snap["retried"] + snap["recovered"] + snap["requeued"],
        runs=sum(sample.run),
        run_ms=sample.run_ms,
        pending=snap["pending"],
        lag_s=snap["lag_s"],
        workers=len(sample.workers),
        slots=sum(w["concurrency"] for w in sample.workers),
    )


def from_samples(samples: Sequence[Sample], target_lag_s: float = DEFAULT_TARGET_LAG_S,
                 window_s: float = WINDOW_S) -> Estimate | None:
    """The estimate over the newest ``window_s`` seconds of samples (None before two exist)."""
    if len(samples) < 2:
        return None
    newest = samples[-1]
    oldest = next(s for s in samples if newest.t - s.t <= window_s)
    if oldest is newest:
        oldest = samples[-2]
    return estimate(reading(oldest), reading(newest), target_lag_s)


class DesiredWorkers(Collector):
    """``reliq_desired_workers{queue}``: one family, a sample a queue that has an estimate.

    ``estimates`` are (queue, estimate or None) pairs computed before the scrape.
    """

    def __init__(self, estimates: Sequence[tuple[str, Estimate | None]]) -> None:
        self.estimates = estimates

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("reliq_desired_workers", "Worker processes that would keep the queue's lag "
                                  "under the target lag, by Little's law (see docs/scaling.md).", labels=["queue"])
        for queue, current in self.estimates:
            if current is not None:
                gauge.add_metric([queue], current.desired_workers)
        yield gauge
