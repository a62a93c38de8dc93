"""The producer API's periodic schedules: ``/schedules`` and ``/schedules/{name}`` (reliq/schedules.py).

Writes need the API token like every other route of the API. A bad name, cron expression,
time zone or field is a 400 that says what is wrong, and nothing is written.
"""

from __future__ import annotations

from aiohttp import web

from reliq import schedules
from reliq.api import PRODUCER, json_body, known_query
from reliq.errors import ScheduleNotFound
from reliq.formats import Put, ScheduleSource
from reliq.queue import Queue
from reliq.web import error, json_response

#: Query parameters every schedule route takes.
_PARAMS = ("queue",)


def _queue(request: web.Request) -> Queue:
    """The queue of a request (``?queue=``, else the server's); InvalidTask (400) for a bad name or parameter."""
    known_query(request, _PARAMS)
    return request.app[PRODUCER].queue(request.query.get("queue") or None)


def _target(request: web.Request) -> tuple[Queue, str]:
    """The queue and the schedule's name of a request; InvalidTask (400) if either is bad."""
    return _queue(request), schedules.check_name(request.match_info["name"])


def _not_found(queue: Queue, name: str) -> web.Response:
    return error(404, f"no schedule {name!r} in queue {queue.name!r}")


async def list_schedules(request: web.Request) -> web.Response:
    """GET /schedules?queue=: every schedule of the queue, by name."""
    queue = _queue(request)
    return json_response({"queue": queue.name, "schedules": await schedules.read(queue)})


async def get_schedule(request: web.Request) -> web.Response:
    """GET /schedules/{name}?queue=: one schedule: definition, next and last run, counts."""
    queue, name = _target(request)
    try:
        return json_response(await schedules.read_one(queue, name))
    except ScheduleNotFound:
        return _not_found(queue, name)


async def put_schedule(request: web.Request) -> web.Response:
    """PUT /schedules/{name}?queue= {type, cron | every, ...}: define it at run time (201 new, 200 otherwise).

    A run-time definition wins over the code's of the same name (see reliq/schedules.py).
    """
    queue, name = _target(request)
    schedule = schedules.from_definition(name, await json_body(request))
    outcome = await queue.schedule_put(schedule, ScheduleSource.API)
    return json_response({"status": outcome, "schedule": await schedules.read_one(queue, name)},
                         201 if outcome == Put.CREATED else 200)


async def delete_schedule(request: web.Request) -> web.Response:
    """DELETE /schedules/{name}?queue=: no slot of it runs any more (tasks enqueued already stay)."""
    queue, name = _target(request)
    if not await queue.schedule_remove(name):
        return _not_found(queue, name)
    return json_response({"status": "deleted", "name": name, "queue": queue.name})


async def trigger_schedule(request: web.Request) -> web.Response:
    """POST /schedules/{name}/trigger?queue=: enqueue its task now, outside its slots (202)."""
    queue, name = _target(request)
    try:
        task_id = await schedules.trigger(queue, name)
    except ScheduleNotFound:
        return _not_found(queue, name)
    return json_response({"status": "queued", "task_id": task_id, "queue": queue.name, "name": name}, 202)


async def _pause(request: web.Request, pause: bool) -> web.Response:
    queue, name = _target(request)
    try:
        changed = await queue.schedule_pause(name, pause, f"api ({request.remote or '?'})")
    except ScheduleNotFound:
        return _not_found(queue, name)
    status = ("paused" if changed else "already paused") if pause else ("resumed" if changed else "not paused")
    return json_response({"status": status, "schedule": await schedules.read_one(queue, name)})


async def pause_schedule(request: web.Request) -> web.Response:
    """POST /schedules/{name}/pause?queue=: decide no slot until resumed (those meanwhile never run)."""
    return await _pause(request, True)


async def resume_schedule(request: web.Request) -> web.Response:
    """POST /schedules/{name}/resume?queue=: run its slots again from now on."""
    return await _pause(request, False)


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the schedule routes."""
    router.add_get("/schedules", list_schedules)
    router.add_get("/schedules/{name}", get_schedule)
    router.add_put("/schedules/{name}", put_schedule)
    router.add_delete("/schedules/{name}", delete_schedule)
    router.add_post("/schedules/{name}/trigger", trigger_schedule)
    router.add_post("/schedules/{name}/pause", pause_schedule)
    router.add_post("/schedules/{name}/resume", resume_schedule)
