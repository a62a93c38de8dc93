"""The reaper loop: finds workers silent past their lease and requeues their tasks.

Any worker may reap; a short lock keeps the scans from piling up, and the reap script
re-checks the heartbeat, so two reapers can never requeue the same list twice.
"""

from __future__ import annotations

import logging

from reliq.periodic import every
from reliq.queue import Queue

log = logging.getLogger(__name__)


class Reaper:
    """Recovers the tasks of dead workers of one queue."""

    def __init__(self, queue: Queue, lease: float, interval: float, owner: str) -> None:
        self.queue = queue
        self.lease = lease
        self.interval = interval
        self.owner = owner

    async def run_once(self) -> tuple[int, int]:
        """Reap every silent worker now; return (tasks recovered, tasks quarantined)."""
        lock = self.queue.keys.reaper_lock
        if not await self.queue.redis.set(lock, self.owner, nx=True, px=max(1, int(self.interval * 1000))):
            return 0, 0
        recovered = quarantined = 0
        for worker_id in await self.queue.silent_workers(self.lease):
            result = await self.queue.reap(worker_id, self.lease)
            if result is None:
                continue
            recovered += result[0]
            quarantined += result[1]
            log.warning(
                "worker %s was silent for over %.0fs: requeued %d task(s), quarantined %d",
                worker_id, self.lease, result[0], result[1],
            )
        return recovered, quarantined

    async def run(self) -> None:
        """Reap forever (until cancelled)."""
        await every(self.interval, self.run_once, "reaper")
