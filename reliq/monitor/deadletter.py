"""Dead-letter operations for the monitor's endpoints and ``reliq dlq``.

List (paged, filtered by type and reason), show, requeue one or many, delete one or
many. Requeuing many runs as a :class:`Replay` that can be rate limited, so a replay of
thousands of failures cannot flatten a downstream service that is just recovering.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson

from reliq.errors import GaveUp, TaskNotFound
from reliq.formats import TaskState, retries_of
from reliq.loops import cancel_all
from reliq.outage import GiveUp, Outage
from reliq.queue import Queue, TaskInfo, text

log = logging.getLogger(__name__)

#: Task fields a dead-letter listing shows.
SUMMARY_FIELDS = ("type", "reason", "attempts", "failures", "max_retries", "body", "last_error", "finished_at")
#: Dead tasks read per script call when scanning the dead list (~1 ms of Redis each).
SCAN_CHUNK = 1000
#: Tasks per script call when taking the oldest dead tasks (RPOP: cheap for Redis).
BATCH = 500
#: Ids per script call when requeuing or deleting named ids: each costs an LREM over the
#: dead list, so this bounds how long one call holds Redis (~15 ms at the 10,000 cap).
ID_BATCH = 100
#: Longest last_error a listing carries (the detail view has all of it).
ERROR_PREVIEW = 300
#: Highest page size a listing accepts.
MAX_LIMIT = 500
#: Finished replays remembered for GET /jobs.
KEEP_JOBS = 20


@dataclass(frozen=True)
class DeadFilter:
    """Which dead tasks an operation applies to; None matches anything."""

    type: str | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        """Whether anything is filtered at all."""
        return self.type is not None or self.reason is not None

    def matches(self, type: str, reason: str) -> bool:
        """Whether a task of ``type`` that died for ``reason`` passes the filter."""
        return (self.type is None or type == self.type) and (self.reason is None or reason == self.reason)


class DeadSummary(TypedDict):
    """One dead task as a listing shows it."""

    task_id: str
    type: str
    reason: str
    attempts: int
    failures: int
    max_retries: int
    last_error: str
    failed_at: str | None


class DeadPage(TypedDict):
    """A page of the dead-letter queue, with the counts behind the filter menus."""

    total: int
    offset: int
    limit: int
    filter: dict[str, str | None]
    items: list[DeadSummary]
    types: dict[str, int]
    reasons: dict[str, int]


def _summary(task_id: str, values: Sequence[bytes | None]) -> DeadSummary:
    f = dict(zip(SUMMARY_FIELDS, values, strict=True))
    finished = f["finished_at"]
    return DeadSummary(
        task_id=task_id,
        type=text(f["type"] or b""),
        reason=text(f["reason"] or b""),
        attempts=int(f["attempts"] or 0),
        failures=int(f["failures"] or 0),
        max_retries=retries_of(f) or 0,
        last_error=text(f["last_error"] or b"")[:ERROR_PREVIEW],
        failed_at=datetime.fromtimestamp(int(finished) / 1000, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z") if finished else None,
    )


async def summaries(queue: Queue, ids: Sequence[str]) -> list[DeadSummary]:
    """Listing rows of ``ids``, read in one pipelined round trip."""
    rows = await queue.task_fields(ids, SUMMARY_FIELDS)
    return [_summary(i, r) for i, r in zip(ids, rows, strict=True)]


async def kinds(queue: Queue) -> AsyncIterator[list[tuple[str, str, str]]]:
    """(id, type, reason) of every dead task, newest first, a chunk at a time.

    Filtering and counting read only these two fields; full rows are read for one page.
    """
    for start in itertools.count(0, SCAN_CHUNK):
        chunk = await queue.dead_kinds(start, SCAN_CHUNK)
        if chunk:
            yield chunk
        if len(chunk) < SCAN_CHUNK:
            return


async def page(queue: Queue, flt: DeadFilter = DeadFilter(), offset: int = 0, limit: int = 20,
               facets: bool = False) -> DeadPage:
    """One page of dead tasks matching ``flt``, newest first.

    Without a filter or facets this reads only the page; otherwise it scans the whole
    dead list (bounded by the dead-letter cap) to filter and to count types and reasons.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    offset = max(0, offset)
    result = DeadPage(total=0, offset=offset, limit=limit, filter={"type": flt.type, "reason": flt.reason},
                      items=[], types={}, reasons={})
    if not flt.active and not facets:
        result["total"] = (await queue.snapshot())["dead_letter"]
        result["items"] = await summaries(queue, await queue.dead_ids(offset, limit))
        return result
    shown: list[str] = []
    async for chunk in kinds(queue):
        for task_id, ttype, reason in chunk:
            result["types"][ttype] = result["types"].get(ttype, 0) + 1
            result["reasons"][reason] = result["reasons"].get(reason, 0) + 1
            if flt.matches(ttype, reason):
                if offset <= result["total"] < offset + limit:
                    shown.append(task_id)
                result["total"] += 1
    result["items"] = await summaries(queue, shown)
    return result


async def matching_ids(queue: Queue, flt: DeadFilter) -> list[str]:
    """Ids of every dead task matching ``flt``, newest first."""
    return [i async for chunk in kinds(queue) for i, ttype, reason in chunk if flt.matches(ttype, reason)]


class Edit(TypedDict):
    """One change of a dead task's payload, as its record keeps it."""

    at: str
    by: str
    previous_payload: Any


class DeadTask(TaskInfo):
    """A dead task's full record, with the payload edits made to it (oldest first)."""

    edits: list[Edit]


async def show(queue: Queue, task_id: str) -> DeadTask:
    """The full record of a dead task; TaskNotFound when the id is not dead-lettered."""
    info = await queue.get(task_id)
    if info["state"] != TaskState.DEAD:
        raise TaskNotFound(task_id)
    [[raw]] = await queue.task_fields([task_id], ["edits"])
    return DeadTask(**info, edits=decode_edits(raw))


def decode_edits(raw: bytes | str | None) -> list[Edit]:
    """The ``edits`` field of a record (a JSON array, times in ms) as the API shows it."""
    edits = orjson.loads(raw) if raw else []
    return [Edit(at=datetime.fromtimestamp(int(e["at"]) / 1000, UTC).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"), by=str(e["by"]), previous_payload=orjson.loads(e["previous_payload"]))
            for e in edits]


async def edit(queue: Queue, task_id: str, payload: Any, by: str, requeue: bool = False) -> bool:
    """Replace a dead task's payload (the edit is recorded on it), then requeue it if asked.

    False when the task is not dead-lettered. The edit and the requeue are two atomic
    steps: a crash between them leaves the task dead with its new payload, edit recorded.
    """
    if not await queue.dead_edit(task_id, payload, by):
        return False
    return await requeue_one(queue, task_id) if requeue else True


async def requeue_one(queue: Queue, task_id: str) -> bool:
    """Send one dead task back to pending; False when it is not in the dead list."""
    return await queue.dead_requeue(ids=[task_id]) == 1


async def delete_one(queue: Queue, task_id: str) -> bool:
    """Delete one dead task and its record; False when it is not in the dead list."""
    return await queue.dead_purge(ids=[task_id]) == 1


async def purge(queue: Queue, flt: DeadFilter = DeadFilter()) -> int:
    """Delete every dead task matching ``flt`` (all of them without a filter); return how many."""
    deleted = 0
    if not flt.active:
        while True:
            n = await queue.dead_purge(oldest=BATCH)
            deleted += n
            if n < BATCH:
                return deleted
    ids = await matching_ids(queue, flt)
    for i in range(0, len(ids), ID_BATCH):
        deleted += await queue.dead_purge(ids=ids[i : i + ID_BATCH])
    return deleted


class JobView(TypedDict):
    """A replay's progress as GET /jobs/{id} reports it."""

    id: str
    kind: str
    state: str
    filter: dict[str, str | None]
    rate: float | None
    total: int | None
    requeued: int
    skipped: int
    started_at: float
    finished_at: float | None
    error: str | None


@dataclass
class Replay:
    """Requeues the dead tasks matching a filter, at most ``rate`` a second when given.

    The set is fixed when the replay starts: tasks that die while it runs are not
    swept up, so a task that fails again cannot loop through the replay.
    """

    queue: Queue
    flt: DeadFilter = DeadFilter()
    rate: float | None = None
    id: str = ""
    state: str = "running"  # running | done | cancelled | failed
    total: int | None = None
    requeued: int = 0
    skipped: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    # A flag rather than Task.cancel(): redis-py can swallow a cancellation that lands
    # inside a command, and a job stopped before its first step must still end.
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Rides out Redis outages between batches; a stop ends the wait (the batch is then not requeued).
    _outage: Outage = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._outage = Outage(f"dead-letter replay {self.id}", log, give_up=GiveUp(when=self._stop))

    def stop(self) -> None:
        """Ask the replay to stop before its next batch (what it requeued stays requeued)."""
        self._stop.set()

    def view(self) -> JobView:
        """The replay's progress."""
        return JobView(id=self.id, kind="requeue", state=self.state,
                       filter={"type": self.flt.type, "reason": self.flt.reason}, rate=self.rate,
                       total=self.total, requeued=self.requeued, skipped=self.skipped,
                       started_at=self.started_at, finished_at=self.finished_at, error=self._error())

    def _error(self) -> str | None:
        down = self._outage.down
        return self.error if self.error is not None or down is None else f"waiting for Redis: {down}"

    async def run(self) -> JobView:
        """Requeue everything matching, pacing batches to the rate; return the final view."""
        try:
            with contextlib.suppress(GaveUp):  # stopped while waiting for Redis
                await self._run()
            self.state = "cancelled" if self._stop.is_set() else "done"
        except asyncio.CancelledError:
            self.state = "cancelled"
            raise
        except Exception as exc:
            log.exception("dead-letter replay %s failed", self.id)
            self.state, self.error = "failed", str(exc)
        finally:
            self.finished_at = time.time()
        return self.view()

    async def _run(self) -> None:
        # Oldest first: a replay hands work back in the order it originally failed.
        ids: list[str] | None = None
        if self.flt.active:
            ids = (await matching_ids(self.queue, self.flt))[::-1]
            self.total = len(ids)
        else:
            # Everything: take the oldest, as many as were dead at the start. Tasks that
            # die meanwhile join at the other end of the list, so they are not taken.
            self.total = (await self.queue.snapshot())["dead_letter"]
        cap = ID_BATCH if ids is not None else BATCH
        size = cap if not self.rate else max(1, min(cap, int(self.rate / 10)))
        began, done = time.monotonic(), 0
        while done < self.total and not self._stop.is_set():
            step = min(size, self.total - done)
            n = await self._requeue(ids[done : done + step] if ids is not None else None, step)
            done += step
            self.requeued += n
            self.skipped += step - n  # requeued or deleted by someone else meanwhile
            if self.rate:
                pause = max(0.0, began + done / self.rate - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)

    async def _requeue(self, ids: list[str] | None, oldest: int) -> int:
        # Retrying is safe: ids no longer dead are ignored, and 'oldest' only ever takes
        # tasks that are dead (at worst a few that died after the start).
        if ids is not None:
            return await self._outage.call(functools.partial(self.queue.dead_requeue, ids=ids))
        return await self._outage.call(functools.partial(self.queue.dead_requeue, oldest=oldest))


class Replays:
    """The replays a monitor process runs in the background, by id."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.jobs: dict[str, Replay] = {}
        self._tasks: dict[str, asyncio.Task[JobView]] = {}
        self._ids = itertools.count(1)

    def start(self, flt: DeadFilter, rate: float | None) -> Replay:
        """Start a replay in the background and return it."""
        job = Replay(self.queue, flt, rate, id=f"requeue-{int(time.time())}-{next(self._ids)}")
        self.jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(job.run(), name=job.id)
        self._tasks[job.id].add_done_callback(lambda _: self._forget_old())
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state != "running"]
        for job in sorted(finished, key=lambda j: j.started_at)[: max(0, len(finished) - KEEP_JOBS)]:
            self.jobs.pop(job.id, None)
            self._tasks.pop(job.id, None)

    def cancel(self, job_id: str) -> Replay | None:
        """Stop a running replay (what it already requeued stays requeued)."""
        job = self.jobs.get(job_id)
        if job:
            job.stop()
        return job

    def views(self) -> list[JobView]:
        """Every remembered replay, newest first."""
        return [j.view() for j in sorted(self.jobs.values(), key=lambda j: j.started_at, reverse=True)]

    async def close(self) -> None:
        """Cancel running replays (the monitor is shutting down)."""
        running = [t for t in self._tasks.values() if not t.done()]
        for job in self.jobs.values():
            job.stop()
        await cancel_all(running)

