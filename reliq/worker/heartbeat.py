"""The heartbeat: tells Redis this worker process is alive, and what it is doing.

It runs in a thread of its own with its own blocking Redis connection, so a handler
that holds the event loop (``time.sleep`` in an ``async def``) cannot silence it: the
worker stays alive in Redis for as long as its tasks may legitimately run. A loop that
is stuck for good must still be detected, so the thread stops beating once the loop has
gone without a tick for longer than the longest timeout among the tasks the worker
holds plus the lease (:attr:`LoopWatch.stuck_after`); the reaper then recovers them
one lease later, as it would a dead worker's. The beat itself is unchanged: server time
in the ``workers`` set, the worker's info hash, and the loop-block counts it carries. Its
reply carries the cancel requests of the tasks the worker holds: a cancel reaches the
worker within one beat even when the pub/sub message that makes it sooner was missed.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis as SyncRedis

from reliq.connection import connect_sync
from reliq.loopwatch import LoopWatch
from reliq.outage import NEVER, Outage
from reliq.queue import beat_of, heartbeat_call
from reliq.scripts import SyncScripts

log = logging.getLogger(__name__)

#: How often the thread wakes to look at the loop (beats are every ``interval``).
LOOK_S = 0.1
#: The longest the heartbeat waits between two tries to reach Redis again (seconds): one
#: cheap call, so it retries often, and reapers know when every live worker is back.
RECONNECT_CAP = 1.0


def landing_time(interval: float) -> float:
    """Seconds after Redis is back by which every live worker's heartbeat has landed."""
    return RECONNECT_CAP + interval + 0.5  # the last backoff, one beat, and the call itself


class Heartbeat:
    """Stamps one worker alive in each of its queues every ``interval`` seconds, from a thread."""

    def __init__(self, redis_url: str, queues: Sequence[str], worker_id: str, interval: float, lease: float,
                 status: Callable[[], dict[str, Any]], watch: LoopWatch | None = None,
                 on_cancels: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self.redis_url = redis_url
        self.queues = list(queues)
        self.worker_id = worker_id
        self.interval = interval
        self.lease = lease
        self.status = status
        self.watch = watch
        #: Called (from the heartbeat's thread) with the tasks this worker was asked to cancel
        #: and still holds: the beat's reply carries them (docs/cancel.md).
        self.on_cancels = on_cancels
        self.beats = 0
        self.failures = 0  # beats that failed (Redis unreachable or refusing)
        self.static = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": int(time.time() * 1000)}
        self._redis: SyncRedis | None = None
        self._scripts: SyncScripts | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._silenced = False

    def run_once(self) -> bool:
        """Beat once in every queue (blocking); return False when this worker had been taken for dead.

        Raises the Redis client's first error, once every queue had its try: on a cluster
        the queues (a partitioned queue's partitions) live on different shards, and one
        shard stalled or down must not silence the beats on the others, or their reapers,
        which saw no outage, take every live worker for dead there. The thread's loop
        rides the error out.
        """
        if self._scripts is None:
            self._redis = connect_sync(self.redis_url, max_connections=2, socket_timeout=max(1.0, self.lease / 3))
            self._scripts = SyncScripts(self._redis)
        info = {**self.static, **self.status()}
        alive = True
        failed: Exception | None = None
        for i, queue in enumerate(self.queues):
            counts = self.watch.take_counts(queue, first=i == 0) if self.watch else {}
            try:
                beat = beat_of(self._scripts("heartbeat", *heartbeat_call(queue, self.worker_id, info,
                                                                           self.lease * 2, counts)))
            except BaseException as exc:
                if self.watch and counts:
                    self.watch.put_back(queue, counts)
                if not isinstance(exc, Exception):
                    raise
                failed = failed or exc
                continue
            alive = alive and (beat.known or self.beats == 0)
            if beat.cancels and self.on_cancels is not None:
                self.on_cancels(beat.cancels)
        if failed is not None:
            raise failed
        self.beats += 1
        if not alive:
            log.warning(
                "worker %s was silent past its %.0fs lease and taken for dead; its tasks were "
                "requeued and results of the ones still running here will be dropped",
                self.worker_id, self.lease,
            )
        return alive

    def start(self) -> None:
        """Beat from a daemon thread until :meth:`stop`."""
        # with the starter's context, so that its log lines name the worker (--log-format json)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name="reliq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating (before the worker hands its tasks back and deregisters)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._redis is not None:
            self._redis.close()

    def stuck(self) -> bool:
        """Whether the event loop has been held longer than any task it holds may run, plus the lease."""
        if self.watch is None:
            return False
        age = self.watch.age()
        if age <= self.watch.stuck_after:
            self._silenced = False
            return False
        if not self._silenced:
            self._silenced = True
            culprit = self.watch.look()
            log.error("event loop held for %.0fs by %s, longer than the longest timeout of the tasks this worker "
                      "holds plus the lease (%.0fs): heartbeat stopped, so the reaper hands its tasks to other "
                      "workers", age, culprit[1] if culprit else "unknown code", self.watch.stuck_after)
        return True

    def _run(self) -> None:
        # a thread cannot await: it keeps the outage's state through failed() and answered()
        outage = Outage("heartbeat", log, give_up=NEVER, cap=RECONNECT_CAP)
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(LOOK_S):
            if self.watch is not None:
                self.watch.look()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.interval
            if self.stuck():
                continue
            try:
                self.run_once()
            except Exception as exc:  # never a traceback, never the end of the thread
                self.failures += 1
                next_beat = time.monotonic() + min(self.interval, outage.failed(exc))
                continue
            outage.answered()
