"""The scheduler loop: moves delayed tasks (retries, scheduled) into pending when due."""

from __future__ import annotations

from reliq.loops import every
from reliq.queue import Queue


class Promoter:
    """Promotes due tasks of one queue every ``interval`` seconds."""

    def __init__(self, queue: Queue, interval: float) -> None:
        self.queue = queue
        self.interval = interval

    async def run_once(self) -> int:
        """Promote every task that is due now; return how many."""
        return await self.queue.promote()

    async def run(self) -> None:
        """Promote forever (until cancelled)."""
        await every(self.interval, self.run_once, "promoter")
