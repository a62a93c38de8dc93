"""Histogram buckets shared by the workers (which count into Redis) and /metrics.

Workers put each observation in a bucket index inside the settle script they already
run, so one scrape of the monitor sees the whole fleet with no extra round trip a task.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds in seconds, as Prometheus ``le`` labels; a last, implicit +Inf bucket.
BOUNDS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
_BOUNDS_MS = tuple(b * 1000 for b in BOUNDS_S)


def bucket(ms: float) -> int:
    """Index of the bucket an observation of ``ms`` milliseconds falls in (le semantics)."""
    return bisect_left(_BOUNDS_MS, ms)
