"""The reaper loop: finds workers silent past their lease and requeues their tasks.

Any worker may reap; a short lock keeps the scans from piling up, and the reap script
re-checks the heartbeat, so two reapers can never requeue the same list twice. After
Redis was stalled or down, nobody's heartbeat could land, so no worker is taken for dead
until every live one has had the time to reconnect and beat again (``grace``).
"""

from __future__ import annotations

import logging

from reliq.loops import every
from reliq.queue import Queue

log = logging.getLogger(__name__)


def outage_gap(lease: float, interval: float) -> float:
    """How long no reaper round may reach Redis before the silence counts as Redis's outage.

    Every worker tries a round each ``interval``, so a longer gap means Redis served none
    of them; it stays a second above the interval, so that a lone worker's own rounds never
    count as one, and otherwise under half the lease, so that an outage short enough to go
    unnoticed leaves the heartbeats (reconnecting within about the outage's length) time
    to land.
    A reaper that was itself away for a while (its worker just started, say) sets the
    grace too: that costs a dead worker's tasks at most the grace, only when it is longer
    than what is left of their lease.
    """
    return max(min(lease / 2, 2 * interval), interval + 1.0)


class Reaper:
    """Recovers the tasks of dead workers of one queue."""

    def __init__(self, queue: Queue, lease: float, interval: float, owner: str, grace: float) -> None:
        self.queue = queue
        self.lease = lease
        self.interval = interval
        self.owner = owner
        #: After an outage, how long no worker is taken for dead: the time live workers'
        #: heartbeats need to land again (``heartbeat.landing_time``).
        self.grace = grace

    async def run_once(self) -> tuple[int, int]:
        """Reap every silent worker now; return (tasks recovered, tasks quarantined)."""
        silent = await self.queue.reap_round(self.owner, self.lease, self.interval,
                                             outage_gap(self.lease, self.interval), self.grace)
        recovered = quarantined = 0
        for worker_id in silent:
            result = await self.queue.reap(worker_id, self.lease)
            if result is None:
                continue
            recovered += result[0]
            quarantined += result[1]
            log.warning(
                "worker %s was silent for over %.0fs: requeued %d task(s), quarantined %d, ended %d cancelled "
                "(asked for while it ran them)", worker_id, self.lease, *result,
            )
        return recovered, quarantined

    async def run(self) -> None:
        """Reap forever (until cancelled)."""
        await every(self.interval, self.run_once, "reaper")
