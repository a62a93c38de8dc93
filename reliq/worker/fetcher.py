"""Claiming tasks for one worker from one or more queues, by weight or in strict order.

Under load the fetcher claims in batches with the claim script, visiting the queues in
a weighted random order each time (Sidekiq's rule: a queue of weight 6 is visited first
six times as often as one of weight 1), or by descending weight with ``strict``. When
every queue is empty it blocks on one BLMOVE per queue at once, each into this worker's
own processing list of that queue, so a task in any queue starts within milliseconds
and an idle worker costs Redis nothing. A BLMOVE left waiting is kept for the next idle
spell rather than cancelled, so waking up never loses a moved id.

A queue whose claim answers "paused" (reliq/pausing.py) is left alone, neither claimed
from nor waited on with a BLMOVE, for :data:`~reliq.pausing.RECHECK_S`; then a claim asks
again. An id a BLMOVE moved in as the pause landed is handed back by that claim.

A claim that could have taken more also says when tasks it set aside (for a rate limit's
next token, or a hold; docs/flow-control.md) are due: an idle wait then ends by that time,
so the next claim takes them as they come due, without spinning in between.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Container, Sequence

from reliq.loops import cancel_all
from reliq.pausing import RECHECK_S
from reliq.queue import Claimed, Queue, Take


class Fetcher:
    """Claims tasks for worker ``worker_id`` from ``queues`` (each with a weight)."""

    def __init__(self, queues: Sequence[tuple[Queue, int]], worker_id: str, *, strict: bool = False) -> None:
        self.queues = [q for q, _ in queues]
        self.weights = [w for _, w in queues]
        self.worker_id = worker_id
        self.strict = strict
        self._waiters: dict[str, asyncio.Task[str | None]] = {}
        self._paused: dict[str, float] = {}  # queue name -> when to ask again (monotonic)
        self._due: dict[str, float] = {}  # queue name -> when its set-aside tasks are due (monotonic)

    def order(self) -> list[Queue]:
        """The order to visit the queues in this time."""
        if self.strict or len(self.queues) == 1:
            ranked = sorted(zip(self.weights, range(len(self.queues)), strict=True), reverse=True)
            return [self.queues[i] for _, i in ranked]
        # Weighted sampling without replacement: sort by u^(1/w), u uniform in (0, 1).
        keys = [random.random() ** (1 / w) for w in self.weights]
        return [q for _, q in sorted(zip(keys, self.queues, strict=True), key=lambda kq: kq[0], reverse=True)]

    async def claim(self, free: int, held: int) -> tuple[list[Claimed], bool]:
        """Claim up to ``free`` tasks without blocking; ``held`` is what the worker holds.

        Returns the tasks and whether a crash suspect waits for the worker to hold
        nothing (then nothing else is claimed: a suspect must run alone).
        """
        tasks = await self._harvest(free, held)
        if any(t.crashes for t in tasks):
            return tasks, False  # a suspect came alone: claim nothing beside it
        for queue in self.order():
            if len(tasks) >= free:
                break
            if self.is_paused(queue):
                continue
            take = self._note(queue, await queue.take(self.worker_id, free - len(tasks), elsewhere=held + len(tasks)))
            if take.blocked:
                return tasks, True
            got = take.tasks
            tasks += got
            if any(t.crashes for t in got):
                break  # a suspect came alone: claim nothing beside it
        return tasks, False

    def is_paused(self, queue: Queue) -> bool:
        """Whether ``queue`` answered "paused" less than :data:`RECHECK_S` ago."""
        until = self._paused.get(queue.name)
        return until is not None and time.monotonic() < until

    def _note(self, queue: Queue, take: Take) -> Take:
        if take.paused:
            self._paused[queue.name] = time.monotonic() + RECHECK_S
        else:
            self._paused.pop(queue.name, None)
        if take.wait_s:
            self._due[queue.name] = time.monotonic() + take.wait_s
        else:
            self._due.pop(queue.name, None)
        return take

    async def wait(self, block_s: float, free: int, held: int) -> list[Claimed]:
        """Block up to ``block_s`` until a task arrives in any queue that is not paused, then claim it.

        With every queue paused, sleep until the first is due to be asked again. Return by
        the time set-aside tasks of a queue are due, too.
        """
        for queue in self.queues:
            if queue.name not in self._waiters and not self.is_paused(queue):
                self._waiters[queue.name] = asyncio.create_task(queue.wait_for_task(self.worker_id, block_s))
        timeout = block_s + 1
        wake_at = [*self._paused.values(), *self._due.values()]
        if wake_at:  # ask a paused queue again in time, even while waiting on the others; take what comes due
            timeout = min(timeout, max(0.0, min(wake_at) - time.monotonic()))
        if self._waiters:
            await asyncio.wait(self._waiters.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)
        return await self._harvest(free, held)

    async def _harvest(self, free: int, held: int) -> list[Claimed]:
        """Claim the ids finished BLMOVEs moved into our lists."""
        tasks: list[Claimed] = []
        for queue in self.queues:
            waiter = self._waiters.get(queue.name)
            if waiter is None or not waiter.done():
                continue
            if any(t.crashes for t in tasks):
                break  # leave the rest in our lists, unclaimed, until the suspect is done
            del self._waiters[queue.name]
            moved = waiter.result()  # raises the waiter's error, e.g. Redis unreachable
            if moved is not None:
                take = await queue.take(self.worker_id, max(1, free - len(tasks)), moved, held + len(tasks))
                tasks += self._note(queue, take).tasks
        return tasks

    async def adopt_orphans(self, known: Container[str], held: int) -> list[Claimed]:
        """After a lost reply, claim ids in our lists that the worker does not know it holds."""
        tasks: list[Claimed] = []
        for queue in self.queues:
            if queue.name in self._waiters:
                continue  # its BLMOVE may have moved an id in: adopting it too would claim it twice
            for task_id in await queue.processing_ids(self.worker_id):
                if task_id not in known:
                    got, _ = await queue.claim(self.worker_id, 1, task_id, held + len(tasks))
                    tasks += got
        return tasks

    async def empty(self) -> bool:
        """Whether every queue has nothing pending (any priority, keyed, set aside) and nothing delayed (burst mode).

        A wake mark (reliq/priorities.py) counts as pending: the claim it causes drops it.
        """
        for queue in self.queues:
            if any(await queue.backlog()):
                return False
        return True

    async def close(self) -> None:
        """Cancel waiting BLMOVEs (an id one of them moved is handed back by the release)."""
        waiters = list(self._waiters.values())
        self._waiters.clear()
        await cancel_all(waiters)
        for waiter in waiters:
            # One that failed as we stopped (Redis went away during the drain): the loops
            # already said Redis is unreachable; unretrieved, asyncio would print its traceback.
            if not waiter.cancelled():
                waiter.exception()
