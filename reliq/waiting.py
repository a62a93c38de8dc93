"""Waiting for a task to end: built once for the API's long poll and both clients.

How it works, and why tasks nobody waits for cost nothing more:

- A waiter runs ``watch.lua``: it reads the task's state and, unless the task has ended
  (succeeded, dead, cancelled), marks it in the queue's ``waiters`` hash with the
  waiter's *hub*, in the same script. The local waiter is registered before that
  script runs, and the wake-up list keeps an id until it is read, so a task that ends
  between the check and the block is never missed.
- The scripts that end a task (settle on success or dead, cancel, the reaper's crash
  quarantine) check once a call whether the ``waiters`` hash exists; only then do they
  look their tasks up in it and push each marked id to its hubs' wake-up lists.
  ``waiters`` expires a minute after the last wait began, so a queue nobody waits on
  pays one EXISTS a script call (``bench/RESULTS.md``: wait).
- A hub is one :class:`Waiters` (one API process, one client): a dispatcher task a
  queue BLPOPs the hub's wake-up list on a connection of its own, and wakes the local
  waiters of each id it pops. A thousand long polls hold one blocking connection, not a
  thousand, so the pool the API enqueues through is never held by a blocking call,
  and a waiter whose caller goes away holds no connection at all.
- No polling: a waiter re-runs ``watch.lua`` only every :data:`RECHECK_S` seconds,
  which renews its mark and catches a wake-up lost with a restart of Redis.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from contextlib import suppress

from redis.asyncio import Redis

from reliq.connection import UNAVAILABLE, connect
from reliq.errors import TaskNotFound, TooManyWaiters
from reliq.outage import NEVER, Outage
from reliq.queue import END_STATES, Queue, TaskInfo
from reliq.syncqueue import SyncQueue

log = logging.getLogger(__name__)

#: Seconds between a waiter's re-checks of its task: a safety net, not the way it learns.
RECHECK_S = 10.0
#: TTL of a queue's waiters hash, renewed by every (re-)check: several re-checks long.
WATCH_TTL_MS = 60_000
#: How long one BLPOP of a dispatcher blocks; an idle dispatcher ends after at most this.
BLOCK_S = 5.0
#: Threads of one process that block in Client.wait at once (more wait for a connection).
MAX_BLOCKING_THREADS = 64
#: Queues one hub waits on at once, each through one blocking connection (more wait for one).
MAX_DISPATCHERS = 64
#: The longest a long poll may wait (GET /task/{id}?wait=).
MAX_WAIT_S = 60.0


class Waiters:
    """The waiters of one process (a hub): wait for tasks of any queue on one Redis to end."""

    def __init__(self, redis_url: str, max_waiters: int = 1000) -> None:
        self.hub = uuid.uuid4().hex
        self.max_waiters = max_waiters
        self._url = redis_url
        self._blocking: Redis | None = None  # the dispatchers' own connections, made on first use
        self._local: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._per_queue: dict[str, int] = {}
        self._dispatchers: dict[str, asyncio.Task[None]] = {}

    @property
    def waiting(self) -> int:
        """How many waits are in progress."""
        return sum(self._per_queue.values())

    async def wait(self, queue: Queue, task_id: str, timeout: float | None = None) -> TaskInfo:
        """The task's record once it has ended, or after ``timeout`` seconds (None: no limit).

        Raises TaskNotFound when there is no such task, TooManyWaiters past ``max_waiters``.
        The wait is on the task's partition (reliq/partitions.py): its marks and wake-ups.
        """
        queue = await queue.locate(task_id)
        if timeout is not None and timeout <= 0:
            return await queue.get(task_id)
        if self.waiting >= self.max_waiters:
            raise TooManyWaiters(self.max_waiters)
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        key = (queue.name, task_id)
        event = asyncio.Event()
        self._local.setdefault(key, set()).add(event)
        self._per_queue[queue.name] = self._per_queue.get(queue.name, 0) + 1
        marked = False
        try:
            while True:
                state = await queue.watch(task_id, self.hub, WATCH_TTL_MS)
                if not state:
                    raise TaskNotFound(task_id)
                if state in END_STATES:
                    break
                marked = True
                self._dispatcher(queue)
                with suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(RECHECK_S, deadline - loop.time()))
                if event.is_set():
                    marked = False  # the wake-up took the mark
                    break
                if loop.time() >= deadline:
                    break
        finally:
            await self._leave(queue, key, event, marked)
        return await queue.get(task_id)

    async def _leave(self, queue: Queue, key: tuple[str, str], event: asyncio.Event, marked: bool) -> None:
        """Forget a finished wait; the last local waiter of a task takes the hub's mark away."""
        self._per_queue[queue.name] -= 1
        if not self._per_queue[queue.name]:
            del self._per_queue[queue.name]
        events = self._local[key]
        events.discard(event)
        if events:
            return
        del self._local[key]
        if not marked:
            return
        try:
            await queue.unwatch(key[1], self.hub)
            if key in self._local:
                # A wait for the same task began meanwhile, and its mark may be the one just
                # taken away: mark again, and wake it at once if the task ended meanwhile.
                state = await queue.watch(key[1], self.hub, WATCH_TTL_MS)
                if not state or state in END_STATES:
                    self._wake(key)
        except UNAVAILABLE as exc:
            # the mark goes with the waiters hash's TTL; a newer waiter re-checks in RECHECK_S
            log.debug("could not unmark task %s: %s", key[1], exc)

    def _wake(self, key: tuple[str, str]) -> None:
        for event in self._local.get(key, ()):
            event.set()

    def _dispatcher(self, queue: Queue) -> None:
        if queue.name not in self._dispatchers:
            self._dispatchers[queue.name] = asyncio.create_task(self._dispatch(queue), name=f"reliq-wake-{queue.name}")

    async def _dispatch(self, queue: Queue) -> None:
        """Pop the hub's wake-ups of ``queue`` and wake their waiters, while anyone waits there."""
        if self._blocking is None:
            # redis-py must not time out a BLPOP that is still blocking on purpose
            self._blocking = connect(self._url, max_connections=MAX_DISPATCHERS, socket_timeout=BLOCK_S + 5)
        wake = functools.partial(queue.next_wake, self.hub, BLOCK_S, self._blocking)
        outage = Outage(f"waiting for tasks of {queue.name!r}", log, give_up=NEVER)  # waits re-check meanwhile
        try:
            while self._per_queue.get(queue.name):
                ended = await outage.call(wake)
                if ended:
                    self._wake((queue.name, ended))
        finally:
            # no await between the last check of the count and this: a new waiter either
            # kept this loop going or finds no dispatcher and starts one
            del self._dispatchers[queue.name]

    async def close(self) -> None:
        """Stop the dispatchers and close their connections (waits in progress re-check, then end)."""
        for task in list(self._dispatchers.values()):
            task.cancel()
        for task in list(self._dispatchers.values()):
            with suppress(asyncio.CancelledError):
                await task
        if self._blocking is not None:
            await self._blocking.aclose()
            self._blocking = None


def wait_blocking(queue: SyncQueue, task_id: str, timeout: float | None = None) -> TaskInfo:
    """:meth:`Waiters.wait` for blocking code (``Client.wait``): the same scripts, marks and keys.

    Threads share no dispatcher here: each call is a hub of its own and blocks in BLPOP
    on its own wake-up list, on a connection of the process's blocking client.
    """
    queue = queue.locate(task_id)
    if timeout is not None and timeout <= 0:
        return queue.get(task_id)
    hub = uuid.uuid4().hex
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    blocking = queue.redis.blocking(RECHECK_S, MAX_BLOCKING_THREADS)
    marked = False
    try:
        while True:
            state = queue.watch(task_id, hub, WATCH_TTL_MS)
            if not state:
                raise TaskNotFound(task_id)
            if state in END_STATES:
                break
            marked = True
            left = min(RECHECK_S, deadline - time.monotonic())
            if left <= 0:
                break
            # at least 10 ms: a BLPOP timeout that rounds to 0 would block for ever
            if queue.next_wake(hub, max(left, 0.01), blocking):
                marked = False  # the wake-up took the mark
                break
    finally:
        if marked:
            with suppress(*UNAVAILABLE):
                queue.unwatch(task_id, hub)  # else it goes with the waiters hash's TTL
    return queue.get(task_id)
