"""Claiming tasks for one worker from one or more queues, by weight or in strict order.

Under load the fetcher claims in batches with the claim script, visiting the queues in
a weighted random order each time (Sidekiq's rule: a queue of weight 6 is visited first
six times as often as one of weight 1), or by descending weight with ``strict``. When
every queue is empty it waits for a wake-up (reliq/worker/nudges.py: one pub/sub
connection for all the queues) and claims from the queues woken, so a task in any queue
starts within milliseconds and an idle worker costs Redis next to nothing; a wake-up whose
claim finds nothing (another worker took the task) goes back to waiting. A queue whose
claim found nothing more is not claimed from again until it is woken (or its set-aside
tasks are due): the scripts nudge whenever its pending list gets a first id, so a wake-up
costs one claim, not one a queue. Once every :data:`SWEEP_S` it claims from every queue
all the same (the fallback for a wake-up lost with a connection, or never sent by an
older reliq's producer).

A queue whose claim answers "paused" (reliq/pausing.py) is left alone, neither claimed
from nor woken for, for :data:`~reliq.pausing.RECHECK_S`, or until its resume says so;
then a claim asks again.

A claim that could have taken more also says when tasks it set aside (for a rate limit's
next token, or a hold; docs/flow-control.md) are due: an idle wait then ends by that time,
so the next claim takes them as they come due, without spinning in between.
"""

from __future__ import annotations

import random
import time
from collections.abc import Container, Sequence

from reliq.pausing import RECHECK_S
from reliq.queue import Claimed, Queue, Take
from reliq.worker.nudges import Nudges

#: How often the fetcher claims from every queue, those it found empty too: the fallback
#: for a wake-up lost with its connection (seconds).
SWEEP_S = 1.0


class Fetcher:
    """Claims tasks for worker ``worker_id`` from ``queues`` (each with a weight)."""

    def __init__(self, queues: Sequence[tuple[Queue, int]], worker_id: str, *, strict: bool = False,
                 nudges: Nudges | None = None) -> None:
        self.queues = [q for q, _ in queues]
        self.weights = [w for _, w in queues]
        self.worker_id = worker_id
        self.strict = strict
        #: The wake-ups (the worker runs them; without, every wait lasts its whole ``block_s``).
        self.nudges = nudges or Nudges(self.queues, worker_id, lambda _: None)
        self._paused: dict[str, float] = {}  # queue name -> when to ask again (monotonic)
        self._due: dict[str, float] = {}  # queue name -> when its set-aside tasks are due (monotonic)
        #: Queues whose last claim found nothing more: not claimed from again until woken, or due,
        #: or the next round of all (at ``_sweep_at``, monotonic).
        self._quiet: set[str] = set()
        self._sweep_at = 0.0

    def order(self) -> list[Queue]:
        """The order to visit the queues in this time."""
        if self.strict or len(self.queues) == 1:
            ranked = sorted(zip(self.weights, range(len(self.queues)), strict=True), reverse=True)
            return [self.queues[i] for _, i in ranked]
        # Weighted sampling without replacement: sort by u^(1/w), u uniform in (0, 1).
        keys = [random.random() ** (1 / w) for w in self.weights]
        return [q for _, q in sorted(zip(keys, self.queues, strict=True), key=lambda kq: kq[0], reverse=True)]

    async def claim(self, free: int, held: int) -> tuple[list[Claimed], bool]:
        """Claim up to ``free`` tasks from every queue without blocking; ``held`` is what the worker holds.

        Returns the tasks and whether a crash suspect waits for the worker to hold
        nothing (then nothing else is claimed: a suspect must run alone). A queue whose
        last claim found it empty is skipped until a wake-up or its set-aside tasks' due
        time says otherwise, except once every :data:`SWEEP_S`.
        """
        now = time.monotonic()
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_S
            skip: set[str] = set()
        else:
            skip = self._quiet.difference(n for n, at in self._due.items() if at <= now)
        return await self._claim_from([q for q in self.order() if q.name not in skip], free, held)

    async def _claim_from(self, queues: list[Queue], free: int, held: int) -> tuple[list[Claimed], bool]:
        """Claim from ``queues`` in turn; the queues woken meanwhile go first (a round of 50 lasts a while)."""
        tasks: list[Claimed] = []
        queues = queues[::-1]  # popped from the end
        while queues:
            if self.nudges.woken:
                woken = self.nudges.take()
                self._quiet -= woken
                queues = [q for q in queues if q.name not in woken] + [q for q in self.queues if q.name in woken]
            queue = queues.pop()
            if len(tasks) >= free:
                break
            if self.is_paused(queue):
                continue
            asked = free - len(tasks)
            take = self._note(queue, await queue.take(self.worker_id, asked, elsewhere=held + len(tasks)), asked)
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

    def _note(self, queue: Queue, take: Take, asked: int) -> Take:
        if take.paused or take.blocked or len(take.tasks) >= asked:
            self._quiet.discard(queue.name)
        else:  # nothing more to claim: any task that comes now nudges
            self._quiet.add(queue.name)
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
        """Wait up to ``block_s`` for a wake-up of a queue that is not paused, and claim from the queues woken.

        Empty at the end of ``block_s`` (then the caller claims from every queue), or by
        the time a paused queue is to be asked again, or set-aside tasks of a queue are due.
        """
        deadline = time.monotonic() + block_s
        wake_at = [*self._paused.values(), *self._due.values()]
        if wake_at:  # ask a paused queue again in time, even while waiting on the others; take what comes due
            deadline = min(deadline, min(wake_at))
        while (left := deadline - time.monotonic()) > 0:
            woken = await self.nudges.wait(left)
            for name in self.nudges.resumed:
                self._paused.pop(name, None)
            self.nudges.resumed.clear()
            if not woken:
                break
            self._quiet -= woken
            tasks, blocked = await self._claim_from([q for q in self.order() if q.name in woken], free, held)
            if tasks or blocked:
                return tasks
        return []

    async def adopt_orphans(self, known: Container[str], held: int) -> list[Claimed]:
        """After a lost reply, claim ids in our lists that the worker does not know it holds."""
        tasks: list[Claimed] = []
        for queue in self.queues:
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
