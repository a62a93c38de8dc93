"""Writing what handlers report with ``ctx.progress``: coalesced, latest wins, once a second.

``ctx.progress(0.42, "42 of 100 rows")`` is a plain call from any thread (an async
handler on the loop, a plain one in the thread pool, a child process's answer reader):
it only replaces this task's latest value in a dict, under a lock. One loop writes what
changed every :data:`INTERVAL_S`, one script call a queue for all of this worker's
tasks (``progress.lua``), so a handler that reports in a tight loop costs Redis one
write a task a second, and a worker with no reports costs it nothing. The script writes
only into an attempt still running on this worker; what is reported after a task ended
is dropped (there is no final flush: its end state says more).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from reliq.connection import UNAVAILABLE, describe_outage
from reliq.loops import every
from reliq.queue import Queue

log = logging.getLogger(__name__)

#: How often reported progress is written, seconds: at most one write a task an interval.
INTERVAL_S = 1.0


class ProgressWriter:
    """The latest reported progress of each running task, written every ``interval`` seconds."""

    def __init__(self, queues: Mapping[str, Queue], worker_id: str, interval: float = INTERVAL_S) -> None:
        self.queues = queues
        self.worker_id = worker_id
        self.interval = interval
        self.writes = 0  # records written, for tests and curiosity
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[str, float, str]] = {}  # task id -> (queue, progress, message)
        #: Tasks that reported progress at all, until they end: their succeeded record drops it.
        self.reported: set[str] = set()

    def report(self, queue: str, task_id: str, done: float, message: str) -> None:
        """Note a task's progress (thread-safe; ``done`` and ``message`` are checked by ``Context.progress``)."""
        with self._lock:
            self._latest[task_id] = (queue, done, message)
            self.reported.add(task_id)

    @property
    def pending(self) -> bool:
        """Whether a running task reported progress."""
        return bool(self.reported)

    def forget(self, task_id: str) -> None:
        """Drop what a task that just ended reported and was not written yet."""
        if self.reported:
            with self._lock:
                self._latest.pop(task_id, None)
                self.reported.discard(task_id)

    async def run_once(self) -> int:
        """Write what was reported since the last call; return how many records were written.

        Raises what the Redis client raises; the reports of a failed write are kept,
        unless a newer one came meanwhile.
        """
        if not self._latest:
            return 0
        with self._lock:
            batch, self._latest = self._latest, {}
        by_queue: dict[str, list[tuple[str, float, str]]] = {}
        for task_id, (queue, done, message) in batch.items():
            by_queue.setdefault(queue, []).append((task_id, done, message))
        written = 0
        try:
            for name, reports in list(by_queue.items()):
                written += await self.queues[name].progress(self.worker_id, reports)
                del by_queue[name]
        except UNAVAILABLE as exc:
            log.debug("progress: %s; %d report(s) kept for the next write", describe_outage(exc), len(batch))
            with self._lock:
                for name, reports in by_queue.items():
                    for task_id, done, message in reports:
                        self._latest.setdefault(task_id, (name, done, message))
            raise
        finally:
            self.writes += written
        return written

    async def run(self) -> None:
        """Write every ``interval`` seconds until cancelled (riding out Redis outages)."""
        await every(self.interval, self.run_once, "progress")
