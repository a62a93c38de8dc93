"""Every task on the dashboard: pages of pending, scheduled, retrying, running and dead tasks.

``GET /tasks?state=&type=&key=&cursor=&limit=`` answers one page, read from the Redis
structures that hold the tasks of that state (``Queue.task_sources``): the pending list
and the held lists of paused types, the delayed set (scheduled and retrying tasks share
it; the record's ``state`` tells them apart), the workers' processing lists, the dead
list. A page costs Redis a bounded amount of work, whatever the number of tasks:

- Without a filter, a page of pending (or running, or dead) tasks is one ``LRANGE`` at
  the cursor's position and one ``HMGET`` a task shown: a million pending tasks page as
  fast as ten.
- A filter (a type, a key; scheduled vs retrying within the delayed set) needs each
  task's record, so a page reads at most :data:`SCAN_BUDGET` ids from the cursor on,
  :data:`CALL_BUDGET` a script call (``browse.lua``, a few ms of Redis each), and stops
  at ``limit`` matches. When the budget runs out first the page holds what it found and
  ``next_cursor`` goes on from where it stopped: a rare type among a million pending
  tasks is a scan the user continues page by page, never a scan of everything at once.
- A type and a key together on pending read that key's own list (flow control keeps
  keyed tasks out of the pending list): no scan at all.

The cursor is ``<source>:<position>:<arg>`` (e.g. ``pending:50:``, ``held:0:send-email``),
a position at the time of the read: tasks enqueued meanwhile push pending tasks further
down (a page may repeat a few rows, never skip one), promotions take scheduled tasks from
the front of the delayed set (a page may then skip a few that just became pending).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

from aiohttp import web

from reliq import priorities
from reliq.errors import InvalidTask, TaskNotFound
from reliq.formats import TaskState, retries_of
from reliq.monitor import deadletter
from reliq.queue import Queue, Source
from reliq.web import error, json_response

#: Ids a page may read at most when a filter needs their records (a few tens of ms of Redis in all).
SCAN_BUDGET = 10_000
#: Ids one script call reads at most (~1 ms of Redis quiet, ~3 ms on a loaded machine): other
#: clients get in between calls.
CALL_BUDGET = 1_000
#: Highest page size.
MAX_LIMIT = 200
#: Longest last_error a listing row carries (the task's page has all of it).
ERROR_PREVIEW = 300
#: The states a listing is of; ``running`` is the dashboard's word for ``processing``.
VIEWS = {**{s.value: s for s in (TaskState.PENDING, TaskState.SCHEDULED, TaskState.RETRYING, TaskState.PROCESSING,
                                   TaskState.DEAD)}, "running": TaskState.PROCESSING}
#: The states whose tasks share the delayed set: telling them apart reads each record.
DELAYED = (TaskState.SCHEDULED, TaskState.RETRYING)
#: Record fields of a listing row (browse.lua returns them with each match).
ROW_FIELDS = ("attempts", "max_retries", "body", "failures", "crashes", "enqueued_at", "queued_at", "started_at",
              "finished_at", "worker", "last_error", "reason", "progress", "progress_message", "priority")
#: The order sources are read in (and a cursor's source that is gone is followed by the next).
KIND_ORDER = ("pending", "group", "held", "delayed", "processing", "dead")


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a listing shows: a state, and optionally a type and a key."""

    state: TaskState
    type: str | None = None
    key: str | None = None


class TaskRow(TypedDict):
    """One task as a listing shows it."""

    task_id: str
    type: str
    state: str
    key: str | None
    attempts: int
    max_retries: int | None
    failures: int
    crashes: int
    enqueued_at: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    #: When a scheduled or retrying task is due.
    due_at: str | None
    worker: str | None
    last_error: str | None
    reason: str | None
    progress: float | None
    progress_message: str | None
    #: 0 (lowest) to 9 (highest); 5 by default (reliq/priorities.py).
    priority: int
    #: Where it is: its list (``pending``, ``held:<type>``, ``processing:<worker>``, ...) and its
    #: position there (0 = newest; in the delayed set, 0 = due soonest).
    source: str
    position: int


class SourceView(TypedDict):
    """One list (or the sorted set) holding tasks of the state, and how many it holds."""

    source: str
    length: int


class TaskPage(TypedDict):
    """A page of a listing and where the next one starts."""

    state: str
    filter: dict[str, str | None]
    limit: int
    cursor: str
    #: Where the next page starts; None when this one read to the end.
    next_cursor: str | None
    #: Tasks in the lists this state's tasks are in, of every type (for ``scheduled`` and
    #: ``retrying``: the delayed set, which holds both, so an upper bound).
    total: int
    total_exact: bool
    #: Ids this page read (with a filter, at most SCAN_BUDGET; then ``scanned_to`` says how far).
    scanned: int
    items: list[TaskRow]
    sources: list[SourceView]


def _ms_iso(value: str) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(int(float(value)) / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _int_or_none(value: str) -> int | None:
    return int(value) if value else None


def _kind(source: Source) -> str:
    """A source's kind as cursors and names spell it: ``pending``, or ``pending@2`` in partition 2."""
    return source.kind + (f"@{source.partition}" if source.partition else "")


def _source_name(source: Source) -> str:
    return _kind(source) + (":" + source.arg if source.arg else "")


def _row(source: Source, task_id: str, score: str, position: int, values: list[str]) -> TaskRow:
    f = dict(zip(("type", "key", "state", *ROW_FIELDS), values, strict=True))
    return TaskRow(
        task_id=task_id, type=f["type"], state=f["state"], key=f["key"] or None,
        attempts=int(f["attempts"] or 0), max_retries=retries_of(f),
        failures=int(f["failures"] or 0), crashes=int(f["crashes"] or 0),
        enqueued_at=_ms_iso(f["enqueued_at"] or f["queued_at"]), queued_at=_ms_iso(f["queued_at"]),
        started_at=_ms_iso(f["started_at"]), finished_at=_ms_iso(f["finished_at"]),
        due_at=_ms_iso(score) if score and float(score) > 0 else None,
        worker=f["worker"] or None, last_error=f["last_error"][:ERROR_PREVIEW] or None, reason=f["reason"] or None,
        progress=float(f["progress"]) if f["progress"] else None, progress_message=f["progress_message"] or None,
        priority=int(f["priority"] or priorities.DEFAULT), source=_source_name(source), position=position,
    )


def encode_cursor(source: Source, position: int) -> str:
    """The cursor of ``position`` in ``source``: ``<kind>:<position>:<arg>`` (the kind ``<kind>@<partition>``
    past a partitioned queue's partition 0)."""
    return f"{_kind(source)}:{position}:{source.arg}"


def decode_cursor(cursor: str) -> tuple[str, int, str, int]:
    """(kind, position, arg, partition) of a cursor; InvalidTask when it is not one."""
    kind, _, rest = cursor.partition(":")
    kind, at, partition = kind.partition("@")
    position, sep, arg = rest.partition(":")
    if kind not in KIND_ORDER or not sep or not position.isdigit() or (at and not partition.isdigit()):
        raise InvalidTask(f"'cursor' must be a cursor a listing returned (<source>:<position>:<arg>), got {cursor!r}")
    return kind, int(position), arg, int(partition or 0)


def _rank(kind: str, arg: str, partition: int = 0) -> tuple[int, int, int, str]:
    """Where a source comes in a listing: by partition, by kind, ready lists by priority (highest first),
    others by name."""
    priority = -int(arg or priorities.DEFAULT) if kind == "pending" and (arg == "" or arg.isdigit()) else 0
    return partition, KIND_ORDER.index(kind), priority, arg if kind != "pending" else ""


def _start(sources: list[Source], cursor: str) -> tuple[int, int]:
    """The index of the cursor's source in ``sources`` and the position in it.

    A source that is gone (a worker that left, a type resumed) is followed by the next
    one in the listing's order, read from its start.
    """
    if not cursor:
        return 0, 0
    kind, position, arg, partition = decode_cursor(cursor)
    rank = _rank(kind, arg, partition)
    for i, s in enumerate(sources):
        here = _rank(s.kind, s.arg, s.partition)
        if here == rank:
            return i, position
        if here > rank:
            return i, 0
    return len(sources), 0


async def page(queue: Queue, flt: TaskFilter, cursor: str = "", limit: int = 50,
               budget: int = SCAN_BUDGET) -> TaskPage:
    """One page of the tasks ``flt`` selects, from ``cursor`` on ('' = the start).

    Reads at most ``budget`` ids when a filter needs records, else about ``limit``.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    if flt.key is not None and flt.type is None and flt.state == TaskState.PENDING:
        raise InvalidTask("a key belongs to its type: give 'type' with 'key' to list pending tasks of a key")
    sources = await queue.task_sources(flt.state, flt.type, flt.key)
    index, position = _start(sources, cursor)
    state = flt.state if flt.state in DELAYED else ""
    items: list[TaskRow] = []
    scanned = 0
    while index < len(sources) and len(items) < limit and scanned < budget:
        source = sources[index]
        got = await queue.browse(source, position, min(CALL_BUDGET, budget - scanned), limit - len(items),
                                 ROW_FIELDS, flt.type or "", state, flt.key or "")
        scanned += got.read
        for task_id, score, pos, values in got.rows:
            items.append(_row(source, task_id, score, pos, values))
        if got.next < 0:
            index, position = index + 1, 0
        else:
            position = got.next
    total = sum(s.length for s in sources)
    return TaskPage(
        state=flt.state, filter={"type": flt.type, "key": flt.key}, limit=limit, cursor=cursor,
        next_cursor=encode_cursor(sources[index], position) if index < len(sources) else None,
        total=total, total_exact=flt.state not in DELAYED, scanned=scanned, items=items,
        sources=[SourceView(source=_source_name(s), length=s.length) for s in sources],
    )


# -- the endpoints ---------------------------------------------------------------------------------


def _text_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and len(value) > 200:
        raise web.HTTPBadRequest(reason=f"'{name}' must be at most 200 characters")
    return value or None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit") or "50"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise web.HTTPBadRequest(reason=f"'limit' must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def add_routes(router: web.UrlDispatcher, queue_of: Callable[[web.Request], Queue]) -> None:
    """Serve the task listing, run now and requeue on ``router``; ``queue_of`` picks the queue (``?queue=``)."""

    async def list_tasks(request: web.Request) -> web.Response:
        """GET /tasks?state=&type=&key=&cursor=&limit=: a page of the tasks in a state."""
        view = request.query.get("state") or "pending"
        if view not in VIEWS:
            return error(400, f"'state' must be one of {', '.join(VIEWS)}, got {view!r}")
        flt = TaskFilter(VIEWS[view], _text_param(request, "type"), _text_param(request, "key"))
        try:
            return json_response(await page(queue_of(request), flt, request.query.get("cursor", ""),
                                            _limit(request)))
        except InvalidTask as exc:
            return error(400, str(exc))

    async def run_now(request: web.Request) -> web.Response:
        """POST /task/{id}/run: a scheduled or retrying task becomes pending now (409 in any other state)."""
        queue, task_id = queue_of(request), request.match_info["id"]
        if await queue.run_now(task_id):
            return json_response({"status": TaskState.PENDING, "task_id": task_id})
        return await _not_in(queue, task_id, "scheduled or retrying")

    async def requeue(request: web.Request) -> web.Response:
        """POST /task/{id}/requeue: a dead task back to pending with a fresh retry budget (409 in any other state)."""
        queue, task_id = queue_of(request), request.match_info["id"]
        if await deadletter.requeue_one(queue, task_id):
            return json_response({"status": "requeued", "task_id": task_id})
        return await _not_in(queue, task_id, TaskState.DEAD)

    router.add_get("/tasks", list_tasks)
    router.add_post("/task/{id}/run", run_now)
    router.add_post("/task/{id}/requeue", requeue)


async def _not_in(queue: Queue, task_id: str, wanted: str) -> web.Response:
    """404 when there is no such task, else 409 with the state it is in instead of ``wanted``."""
    try:
        state = (await queue.get(task_id))["state"]
    except TaskNotFound:
        return error(404, f"no task {task_id!r} in queue {queue.name!r}")
    return json_response({"error": f"task {task_id!r} is {state}, not {wanted}", "state": state}, 409)

