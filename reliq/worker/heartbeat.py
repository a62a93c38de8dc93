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

On a Redis Cluster the queues (a partitioned queue's partitions) live on several shards,
and each shard's beats run in a thread of their own, on a schedule and an outage of
their own: a shard whose primary stalls (it takes the connection and never answers)
holds its own beat for a socket timeout, and no other shard's, whose reapers, which saw
nothing wrong, would otherwise take every live worker for dead there. The threads share
the one cluster client, and a primary only ever gets the beats of its own queues: one
connection a shard, as before (a second only while a failed beat's slot-map reload
reads through it). On one server all the queues are one shard, beaten in the
heartbeat's own thread, as they always were.
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

from reliq.connection import UNAVAILABLE, connect_sync, is_cluster, shard_of
from reliq.loopwatch import LoopWatch
from reliq.outage import NEVER, Outage
from reliq.queue import beat_of, heartbeat_call, heartbeat_key
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


class _Shard:
    """The beats to the queues one primary serves: when the next is due, the one under way, its outage."""

    def __init__(self, name: str, due: float) -> None:
        self.name = name
        self.queues: list[str] = []
        self.next_beat = due
        # one warning an outage of each shard, naming it: on a cluster they come and go apart
        self.outage = Outage(f"heartbeat to {name}" if name else "heartbeat", log, give_up=NEVER, cap=RECONNECT_CAP)
        self.thread: threading.Thread | None = None

    def ready(self, now: float) -> bool:
        """Whether its next beat is due and its last one is over (a stalled shard's is not)."""
        return self.next_beat <= now and not (self.thread is not None and self.thread.is_alive())


class Heartbeat:
    """Stamps one worker alive in each of its queues every ``interval`` seconds, from a thread (one a shard)."""

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
        #: Called (from a heartbeat thread) with the tasks this worker was asked to cancel
        #: and still holds: the beat's reply carries them (docs/cancel.md).
        self.on_cancels = on_cancels
        self.beats = 0  # beats that landed in every queue they were for (a round, or a shard's)
        self.failures = 0  # beats that failed (Redis unreachable or refusing)
        self.static = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": int(time.time() * 1000)}
        self._redis: SyncRedis | None = None
        self._scripts: SyncScripts | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._silenced = False
        #: Whether each shard beats from a thread of its own (a cluster), or all inline (one server).
        self._threaded = is_cluster(redis_url)
        self._shards: dict[str, _Shard] = {}
        self._registered: set[str] = set()  # the queues a beat has landed in
        self._counted = threading.Lock()  # beats and failures, counted from several threads
        self._regrouping = Outage("heartbeat", log, give_up=NEVER, cap=RECONNECT_CAP)  # the cluster's slot map
        self._regroup_at = 0.0

    def run_once(self) -> bool:
        """Beat once in every queue (blocking); return False when this worker had been taken for dead.

        Raises the Redis client's first error, once every queue had its try: on a cluster
        the queues (a partitioned queue's partitions) live on different shards, and one
        shard stalled or down must not silence the beats on the others, or their reapers,
        which saw no outage, take every live worker for dead there. So each shard's beats
        run at once, in threads. The thread's loop rides the error out.
        """
        info = {**self.static, **self.status()}
        groups = list(self._groups().values())
        outcomes: list[bool | Exception] = [True] * len(groups)

        def beat(i: int) -> None:
            try:
                outcomes[i] = self._beat(groups[i], info)
            except Exception as exc:
                outcomes[i] = exc

        others = [self._thread_of(f"reliq-heartbeat-{i}", beat, i) for i in range(1, len(groups))]
        for thread in others:
            thread.start()
        if groups:
            beat(0)
        for thread in others:
            thread.join()
        if errors := [o for o in outcomes if isinstance(o, Exception)]:
            raise errors[0]
        self._count(failed=False)
        return all(outcomes)

    def _client(self) -> tuple[SyncRedis, SyncScripts]:
        if self._redis is None or self._scripts is None:
            self._redis = connect_sync(self.redis_url, max_connections=2, socket_timeout=max(1.0, self.lease / 3))
            self._scripts = SyncScripts(self._redis)
        return self._redis, self._scripts

    def _groups(self) -> dict[str, list[str]]:
        """The worker's queues by the primary that serves them now (all one group on one server)."""
        if not self._threaded:
            return {"": list(self.queues)}
        client, _ = self._client()
        groups: dict[str, list[str]] = {}
        for queue in self.queues:
            try:
                name = shard_of(client, heartbeat_key(queue))
            except UNAVAILABLE:
                name = ""  # no primary serves its slot now: its beat says why
            groups.setdefault(name, []).append(queue)
        return groups

    def _beat(self, queues: Sequence[str], info: dict[str, Any]) -> bool:
        """Beat in each of ``queues``; raise the first error once each had its try."""
        _, scripts = self._client()
        alive = True
        failed: Exception | None = None
        for queue in queues:
            if self._stop.is_set():
                break  # stopped: no beat may re-register this worker once it deregistered
            counts = self.watch.take_counts(queue, first=queue == self.queues[0]) if self.watch else {}
            try:
                beat = beat_of(scripts("heartbeat", *heartbeat_call(queue, self.worker_id, info,
                                                                     self.lease * 2, counts)))
            except BaseException as exc:
                if self.watch and counts:
                    self.watch.put_back(queue, counts)
                if not isinstance(exc, Exception):
                    raise
                failed = failed or exc
                continue
            # its first beat in a queue finds it unknown; a later one, only if a reaper took it for dead
            alive = alive and (beat.known or queue not in self._registered)
            self._registered.add(queue)
            if beat.cancels and self.on_cancels is not None:
                self.on_cancels(beat.cancels)
        if failed is not None:
            raise failed
        if not alive:
            log.warning(
                "worker %s was silent past its %.0fs lease and taken for dead; its tasks were "
                "requeued and results of the ones still running here will be dropped",
                self.worker_id, self.lease,
            )
        return alive

    def _count(self, failed: bool) -> None:
        with self._counted:
            if failed:
                self.failures += 1
            else:
                self.beats += 1

    @staticmethod
    def _thread_of(name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        # with the starter's context, so that its log lines name the worker (--log-format json)
        return threading.Thread(target=contextvars.copy_context().run, args=(target, *args), name=name, daemon=True)

    def start(self) -> None:
        """Beat from a daemon thread until :meth:`stop`."""
        self._thread = self._thread_of("reliq-heartbeat", self._run)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating (before the worker hands its tasks back and deregisters)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        for shard in list(self._shards.values()):  # the loop is over: the shards no longer change
            if shard.thread is not None:
                shard.thread.join(max(0.0, deadline - time.monotonic()))
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
        # a thread cannot await: each shard keeps its outage's state through failed() and answered()
        self._regroup_at = time.monotonic() + self.interval
        while not self._stop.wait(LOOK_S):
            if self.watch is not None:
                self.watch.look()
            now = time.monotonic()
            if now < self._regroup_at or (self._shards and not any(s.ready(now) for s in self._shards.values())):
                continue
            if self.stuck():
                self._regroup_at = now + self.interval
                for shard in self._shards.values():
                    shard.next_beat = max(shard.next_beat, now + self.interval)
                continue
            try:
                ready = [s for s in self._regroup(now) if s.ready(now)]
            except Exception as exc:  # the cluster unreachable: no slot map to beat by
                self._count(failed=True)
                self._regroup_at = now + min(self.interval, self._regrouping.failed(exc))
                continue
            self._regrouping.answered()
            info = {**self.static, **self.status()}
            for shard in ready:
                shard.next_beat = now + self.interval
                if self._threaded:
                    shard.thread = self._thread_of(f"reliq-heartbeat {shard.name}", self._beat_shard, shard, info)
                    shard.thread.start()
                else:
                    self._beat_shard(shard, info)

    def _regroup(self, now: float) -> list[_Shard]:
        """The shards that serve the worker's queues now, each with its queues (a slot moved, a failover)."""
        groups = self._groups()
        for name, queues in groups.items():
            shard = self._shards.get(name)
            if shard is None:
                shard = self._shards[name] = _Shard(name, now)
            shard.queues = queues
        for name, shard in list(self._shards.items()):
            if name not in groups and shard.ready(now):
                del self._shards[name]  # it serves none of them now
        return [self._shards[name] for name in groups]

    def _beat_shard(self, shard: _Shard, info: dict[str, Any]) -> None:
        try:
            self._beat(shard.queues, info)
        except Exception as exc:  # never a traceback, never the end of the thread
            if self._stop.is_set():
                return  # cut short by stop()
            self._count(failed=True)
            shard.next_beat = time.monotonic() + min(self.interval, shard.outage.failed(exc))
            return
        self._count(failed=False)
        shard.outage.answered()
