"""The heartbeat loop: tells Redis this worker process is alive, and what it is doing."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from reliq.periodic import every
from reliq.queue import Queue

log = logging.getLogger(__name__)

#: The longest the heartbeat waits between two tries to reach Redis again (seconds): one
#: cheap call, so it retries often, and reapers know when every live worker is back.
RECONNECT_CAP = 1.0


def landing_time(interval: float) -> float:
    """Seconds after Redis is back by which every live worker's heartbeat has landed."""
    return RECONNECT_CAP + interval + 0.5  # the last backoff, one beat, and the call itself


class Heartbeat:
    """Stamps one worker alive every ``interval`` seconds, with its info for the monitor."""

    def __init__(self, queue: Queue, worker_id: str, interval: float, lease: float,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.interval = interval
        self.lease = lease
        self.status = status
        self.beats = 0
        self.static = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": int(time.time() * 1000)}

    async def run_once(self) -> bool:
        """Beat once; return False when this worker had been taken for dead meanwhile."""
        info = {**self.static, **self.status()}
        _, known = await self.queue.heartbeat(self.worker_id, info, ttl_s=self.lease * 2)
        self.beats += 1
        if not known and self.beats > 1:
            log.warning(
                "worker %s was silent past its %.0fs lease and taken for dead; its tasks were "
                "requeued and results of the ones still running here will be dropped",
                self.worker_id, self.lease,
            )
            return False
        return True

    async def run(self) -> None:
        """Beat forever (until cancelled)."""
        await every(self.interval, self.run_once, "heartbeat", reconnect_cap=RECONNECT_CAP)
