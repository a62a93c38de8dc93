"""The succeeded-record trimmer: keeps a quiet queue's finished records within their age.

The settle script trims the succeeded lists as tasks succeed (by count and by age), so
a busy queue needs nothing more. A queue that has gone quiet settles nothing, and its
records would outlive ``result_ttl``: each worker therefore runs this loop, one script
call a queue every ``interval`` (``trim.lua``: a list's oldest id and its finish time,
when nothing is due). What it deletes is counted (``trimmed``, ``expired``), as in settle.
"""

from __future__ import annotations

from collections.abc import Mapping

from reliq.loops import every
from reliq.queue import Queue
from reliq.settings import Retention


class SucceededTrimmer:
    """Deletes the succeeded records of one queue past their retention."""

    def __init__(self, queue: Queue, retention: Mapping[str, Retention], interval: float) -> None:
        self.queue = queue
        self.retention = retention
        self.interval = interval

    async def run_once(self) -> tuple[int, int]:
        """Trim now; return (records trimmed past a count, records expired past an age)."""
        return await self.queue.trim_succeeded(self.retention)

    async def run(self) -> None:
        """Trim forever (until cancelled)."""
        await every(self.interval, self.run_once, "succeeded-record trimmer")
