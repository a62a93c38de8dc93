"""The dead-letter trimmer: keeps a capped dead-letter queue within its cap, losing nothing.

With ``dead_cap`` set (none by default), each worker runs this loop: the oldest dead
tasks past the cap are moved, whole records, into the archive stream by one script
(``dead_trim.lua``), counted (``dead_evicted``) and logged here with their ids. The
archive keeps ``dead_archive_cap`` entries; what falls off it is counted
(``dead_archive_dropped``) and logged too. Trimming here rather than inside the settle
script keeps the hot path free of it; the cap is therefore kept within about one
``reap_interval``.
"""

from __future__ import annotations

import logging

from reliq.loops import every
from reliq.queue import Queue

log = logging.getLogger(__name__)

#: Dead tasks evicted per script call (each copies one record into the stream).
BATCH = 500


class DeadTrimmer:
    """Evicts dead tasks past the cap of one queue into its archive."""

    def __init__(self, queue: Queue, interval: float) -> None:
        self.queue = queue
        self.interval = interval

    async def run_once(self) -> tuple[int, int]:
        """Trim now; return (tasks evicted into the archive, archive entries dropped)."""
        evicted = dropped = 0
        while True:
            out, gone = await self.queue.dead_trim(BATCH)
            evicted += len(out)
            dropped += len(gone)
            if out:
                log.warning("dead-letter queue %r is over its cap of %d: moved the %d oldest to the archive "
                            "(read them with `reliq dlq export --archived`): %s", self.queue.name,
                            self.queue.settings.dead_cap, len(out), " ".join(out))
            if gone:
                log.error("dead-letter archive of %r is over its cap of %d: %d archived task(s) deleted for good "
                          "(raise RELIQ_DEAD_ARCHIVE_CAP or export the archive): %s", self.queue.name,
                          self.queue.settings.dead_archive_cap, len(gone), " ".join(gone))
            if len(out) < BATCH:
                return evicted, dropped

    async def run(self) -> None:
        """Trim forever (until cancelled)."""
        await every(self.interval, self.run_once, "dead-letter trimmer")
