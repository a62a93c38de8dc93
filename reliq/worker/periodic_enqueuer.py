"""The periodic enqueuer: every worker runs one a queue, and each slot of a schedule is enqueued once.

A round reads every schedule of the queue with the Redis clock (one script call), decides
the due slots of each (:func:`reliq.schedules.plan`), records the decision in Redis only
if no other worker made one from the same cursor (``schedule_fire.lua``), then enqueues
the decided slots through ``enqueue.lua`` and marks them done. See reliq/schedules.py for
why that is exactly once through crashes, and why a worker's own clock plays no part: the
waits between rounds are measured from the Redis clock's reading, on the monotonic clock.

Code-declared schedules (``reliq.periodic``) are written before the first round
(:meth:`PeriodicEnqueuer.declare`), as the worker starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from redis.exceptions import OutOfMemoryError

from reliq.errors import InvalidSchedule, QueueFull, RedisFull
from reliq.formats import Fire, Put, ScheduleSource
from reliq.loops import every
from reliq.queue import Queue
from reliq.schedules import Declared, Schedule, decode_rows, from_json, plan
from reliq.slots import next_after

log = logging.getLogger(__name__)

#: Longest wait between two rounds, seconds: how soon a new, changed or resumed schedule is seen.
POLL_S = 1.0


@dataclass
class Round:
    """What one round did: the tasks it enqueued, the slots it skipped, and when the next is due."""

    now_ms: int
    enqueued: list[str] = field(default_factory=list)
    skipped: int = 0
    #: Seconds until the earliest next slot of any running schedule (at most the poll interval).
    wait_s: float = POLL_S
    #: What schedule_fire.lua answered, by schedule (only those with a decision to record).
    outcomes: dict[str, Fire] = field(default_factory=dict)


class PeriodicEnqueuer:
    """Enqueues the due slots of one queue's periodic schedules."""

    def __init__(self, queue: Queue, declared: Sequence[Declared] = (), poll_s: float = POLL_S) -> None:
        self.queue = queue
        self.declared = [d for d in declared if (d.queue or queue.name) == queue.name]
        self.poll_s = poll_s
        self._parsed: dict[tuple[str, str], Schedule] = {}  # (name, stored definition) -> schedule
        self._unreadable: set[tuple[str, str]] = set()  # warned about once each
        self._full = False  # Redis refused a write (maxmemory): warned once until it takes them again

    async def declare(self) -> None:
        """Write the schedules this worker's code declares for this queue (worker start)."""
        names = set()
        for d in self.declared:
            names.add(d.schedule.name)
            outcome = await self.queue.schedule_put(d.schedule, ScheduleSource.CODE)
            if outcome == Put.KEPT:
                log.warning("schedule %r of queue %r: its run-time definition (PUT /schedules, reliq schedule add) "
                            "differs from the code's and wins; remove it to go back to the code's",
                            d.schedule.name, self.queue.name)
            elif outcome != Put.UNCHANGED:
                log.info("schedule %r of queue %r %s from code (%s)", d.schedule.name, self.queue.name, outcome,
                         d.schedule.when)
        _, rows = decode_rows(await self.queue.schedule_rows())
        for name, fields, _ in rows:
            if fields.get("source") == ScheduleSource.CODE and name not in names:
                log.warning("schedule %r of queue %r comes from code this worker does not declare; if it is gone "
                            "from the code, remove it: reliq schedule remove %s", name, self.queue.name, name)

    async def run_once(self) -> Round:
        """One round over every schedule of the queue."""
        started = time.monotonic()
        now, rows = decode_rows(await self.queue.schedule_rows())
        result = Round(now)
        earliest: int | None = None
        for name, fields, _ in rows:
            if fields.get("firing"):  # a decision whose tasks are not all in (its worker died): finish it
                await self._enqueue(name, fields["firing"].encode(), fields.get("firing_def", ""), result)
            schedule = self._schedule(name, fields.get("def", ""))
            if schedule is None or fields.get("paused"):
                continue
            upto = fields.get("upto", "")
            due = await self._decide(schedule, fields.get("version", ""), upto, now, result)
            earliest = due if earliest is None else min(earliest, due)
        if earliest is not None:
            elapsed = time.monotonic() - started
            result.wait_s = max(0.0, min(self.poll_s, (earliest - now) / 1000 - elapsed))
        else:
            result.wait_s = self.poll_s
        return result

    async def _decide(self, schedule: Schedule, version: str, upto: str, now: int, result: Round) -> int:
        """Decide, record and enqueue the due slots of one schedule; return when its next slot is due (ms)."""
        cursor = int(upto or now)
        decision = plan(schedule, cursor, now)
        if decision is None:
            return next_after(schedule.timing, cursor)
        slots = orjson.dumps(decision.run)
        outcome = await self.queue.schedule_fire(schedule.name, version, upto, decision, slots)
        result.outcomes[schedule.name] = outcome
        if outcome in (Fire.RACED, Fire.CHANGED):
            return now  # another worker decided, or the schedule changed: look again at once
        if outcome != Fire.OK:
            return now + int(self.poll_s * 1000)  # busy (its last slots wait to be enqueued), paused, gone
        if decision.skipped:
            result.skipped += decision.skipped
            log.warning("schedule %r of queue %r: %d missed slot(s) skipped (missed=%s)", schedule.name,
                        self.queue.name, decision.skipped, schedule.missed)
        if decision.run:
            await self._enqueue(schedule.name, slots, schedule.to_json().decode(), result)
        return now if decision.more else next_after(schedule.timing, decision.upto)

    async def _enqueue(self, name: str, firing: bytes, definition: str, result: Round) -> None:
        """Enqueue a recorded decision's slots (again: the idempotency keys make that safe) and mark it done."""
        schedule = self._schedule(name, definition)
        if schedule is None:
            return
        specs = [schedule.slot_task(slot) for slot in orjson.loads(firing)]
        try:
            ids = await self.queue.enqueue_specs(specs)
        except (QueueFull, RedisFull) as exc:
            log.warning("schedule %r: its due slot(s) wait to be enqueued: %s", name, exc)
            return
        if await self.queue.schedule_enqueued(name, firing, ids[-1][0]):
            result.enqueued += [task_id for task_id, _ in ids]
            log.debug("schedule %r enqueued %s", name, ", ".join(task_id for task_id, _ in ids))

    def _schedule(self, name: str, definition: str) -> Schedule | None:
        """The stored definition, parsed once; None (warned once) when it cannot be read."""
        key = (name, definition)
        if len(self._parsed) > 10_000:  # definitions replaced over a long life
            self._parsed.clear()
        if key not in self._parsed:
            try:
                self._parsed[key] = from_json(name, definition)
            except InvalidSchedule as exc:
                if key not in self._unreadable:
                    self._unreadable.add(key)
                    log.warning("schedule %r of queue %r is not run: %s", name, self.queue.name, exc)
                return None
        return self._parsed[key]

    async def _round(self) -> None:
        """A round, and more while a slot falls due before the next one: each slot is met on time."""
        try:
            result = await self.run_once()
            while result.wait_s < self.poll_s:
                await asyncio.sleep(result.wait_s)
                result = await self.run_once()
        except OutOfMemoryError as exc:  # a decision is a write: due slots wait (counted late, or missed)
            if not self._full:
                log.warning("periodic enqueuer of queue %r: Redis refuses writes (%s); due slots wait", self.queue.name,
                            exc)
            self._full = True
            return
        if self._full:
            log.info("periodic enqueuer of queue %r: Redis takes writes again", self.queue.name)
        self._full = False

    async def run(self) -> None:
        """Enqueue due slots forever (until cancelled), riding out Redis outages."""
        await every(self.poll_s, self._round, "periodic enqueuer")
