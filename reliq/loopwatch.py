"""Watching a worker's event loop: when a handler holds it, say so, and by whom.

An ``async def`` handler that calls ``time.sleep``, does blocking I/O or runs a CPU loop
holds the event loop: nothing else on it runs meanwhile — not the other tasks, not the
settler, and (before the heartbeat had its own thread) not the heartbeat, so the worker
was taken for dead and its tasks ran twice. The loop stamps a tick every ``tick``
seconds (:meth:`LoopWatch.run`); the heartbeat thread reads how old the last tick is
(:meth:`LoopWatch.age`) to tell a busy worker from a stuck one, and, when a block passes
the threshold, notes which asyncio task is holding the loop (:meth:`LoopWatch.look`).
When the loop comes back, the block is logged once, naming the task type and id, and
counted for ``reliq_event_loop_blocked_seconds`` (the heartbeat carries the counts into
the queue's metrics hash, so the monitor sees the whole fleet).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from reliq.formats import Metric, metric
from reliq.histogram import bucket

log = logging.getLogger(__name__)

#: How often the loop stamps its tick, seconds: the resolution of a measured block.
TICK_S = 0.1
#: What to tell the author of the handler.
ADVICE = ("an async handler must not block: no time.sleep, blocking I/O or long CPU loops in it; "
          "await async calls, use asyncio.to_thread, a plain def handler, or isolation='process'")

#: Who holds the loop: (queue to count the block in, or "" for the worker's first; words for the log).
Culprit = tuple[str, str]


class LoopWatch:
    """Measures how long the event loop goes without running anything else."""

    def __init__(self, threshold: float, culprit_of: Callable[[asyncio.Task[Any] | None], Culprit],
                 tick: float = TICK_S) -> None:
        self.threshold = threshold
        self.tick = tick
        self.culprit_of = culprit_of
        self.last = time.monotonic()  # the loop's last tick (written by the loop only)
        #: Seconds without a tick after which the worker is stuck for good (see Worker.stuck_after).
        self.stuck_after = math.inf
        self.blocks = 0
        self.blocked_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._culprit: Culprit | None = None  # noted by the heartbeat thread during a block
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    async def run(self, stuck_after: Callable[[], float]) -> None:
        """Tick until cancelled; log and count every block of at least the threshold."""
        self._loop = asyncio.get_running_loop()
        self.last = time.monotonic()
        while True:
            self.stuck_after = stuck_after()
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            blocked = now - self.last - self.tick
            self.last = now
            if blocked >= self.threshold:
                self._ended(blocked)

    def _ended(self, seconds: float) -> None:
        culprit, self._culprit = self._culprit, None
        queue, who = culprit or ("", "code the watcher did not catch in the act")
        self.blocks += 1
        self.blocked_s += seconds
        log.warning("event loop blocked for %.1fs by %s: nothing else ran on this worker meanwhile; %s",
                    seconds, who, ADVICE)
        with self._lock:
            counts = self._counts.setdefault(queue, Counter())
            counts[metric(Metric.BLOCKS, bucket(seconds * 1000))] += 1
            counts[metric(Metric.BLOCKED_SUM)] += round(seconds * 1000)

    # -- called from the heartbeat thread ------------------------------------------------

    def age(self) -> float:
        """Seconds since the loop last ticked (about ``tick`` when it is responsive)."""
        return time.monotonic() - self.last

    def look(self) -> Culprit | None:
        """During a block past the threshold, note (once) and return who holds the loop."""
        if self._loop is None or self.age() < self.threshold + self.tick:
            return None
        if self._culprit is None:
            # current_task(loop) only reads a dict: safe from another thread, and the task
            # it names cannot change while the loop is held.
            self._culprit = self.culprit_of(asyncio.current_task(self._loop))
        return self._culprit

    def take_counts(self, queue: str, first: bool) -> dict[str, int]:
        """The counts to report in ``queue`` since the last take (``first``: also those of no queue)."""
        with self._lock:
            counts = self._counts.pop(queue, Counter())
            if first:
                counts.update(self._counts.pop("", Counter()))
            return dict(counts)

    def put_back(self, queue: str, counts: dict[str, int]) -> None:
        """Counts a failed beat could not deliver: they go with the next one."""
        with self._lock:
            self._counts.setdefault(queue, Counter()).update(counts)
