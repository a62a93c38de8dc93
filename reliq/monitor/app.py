"""The monitor (``reliq monitor``): the live dashboard, /stats, /metrics, dead-letter actions.

Who may read and write is decided once, by :func:`access` (see docs/monitor.md): with a
token set, every mutating endpoint needs ``Authorization: Bearer <RELIQ_API_TOKEN>``, and
reads need it (or ``RELIQ_READ_TOKEN``) too beyond loopback, unless ``--public-read``.
A background sampler reads the queue once a second for rates, the 15-minute history and
the Server-Sent Events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from reliq import limits, memory, pausing, schedules
from reliq.errors import ConfigError, InvalidTask, TaskNotFound
from reliq.loops import cancel_all
from reliq.monitor import autoscale, browse, deadletter, metrics, tasks
from reliq.monitor.deadletter import DeadFilter, Replays
from reliq.monitor.sampler import RATE_WINDOW_S, Sampler
from reliq.queue import Queue
from reliq.settings import Settings, check_queue_name, is_loopback
from reliq.web import ROLE, Access, access_guard, error, errors_as_json, json_response


@dataclass
class Watched:
    """One queue the monitor shows: its sampler and its requeue jobs."""

    queue: Queue
    sampler: Sampler
    replays: Replays


#: Every queue the monitor shows, by name; the first is the default of ``?queue=``.
WATCHED = web.AppKey("watched", dict[str, Watched])
#: The first queue's sampler (what a single-queue monitor serves).
SAMPLER = web.AppKey("sampler", Sampler)

STATIC = Path(__file__).parent.parent / "static"
#: Highest replay rate accepted, tasks/s (beyond it, leave the rate out: no limit).
MAX_RATE = 100_000.0
#: What the page may load: only reliq itself (no CDN), and no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'")
#: Longest editor name a payload edit records.
MAX_BY = 200
#: Seconds between SSE keep-alive comments when no reading arrives (Redis down).
KEEPALIVE_S = 5.0


# -- reading views --------------------------------------------------------------------


def watched(request: web.Request) -> Watched:
    """The queue a request is about: ``?queue=NAME``, else the first one (404 if unknown)."""
    all_ = request.app[WATCHED]
    name = request.query.get("queue") or next(iter(all_))
    if name not in all_:
        raise web.HTTPNotFound(reason=f"this monitor does not watch a queue {name!r}; it watches {', '.join(all_)}")
    return all_[name]


async def queues(request: web.Request) -> web.Response:
    """GET /queues: the queues this monitor watches, with their depths and what is paused in each.

    ``queues`` lists their names (the page offers a choice when several); ``details`` has,
    a queue, its pending (held tasks of paused types included), processing, delayed and
    dead-letter depths, ``paused`` (the whole queue) and the pause state.
    """
    details = []
    for name, w in request.app[WATCHED].items():
        snap = await w.queue.snapshot()
        details.append({"name": name, "pending": snap["pending"], "held": snap["held"],
                        "processing": snap["processing"], "delayed": snap["delayed"],
                        "dead_letter": snap["dead_letter"], "workers": snap["workers"],
                        "paused": snap["paused"]["queue"] is not None, "pauses": snap["paused"]})
    return json_response({"queues": list(request.app[WATCHED].keys()), "details": details})


async def index(request: web.Request) -> web.StreamResponse:
    """GET /: the dashboard page."""
    return web.FileResponse(STATIC / "index.html", headers={
        "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


async def stats(request: web.Request) -> web.Response:
    """GET /stats: depths, workers, lag and counters, with rates and latency percentiles."""
    w = watched(request)
    sampler = w.sampler
    snapshot = await w.queue.snapshot()
    blocks = metrics.parse_loop_blocks(await w.queue.metric_counts())
    mem = await memory.read(w.queue.redis)
    return json_response({**snapshot, "schedules": schedules.summary(await schedules.read(w.queue)),
                          "redis_memory": mem.view(), "rates": sampler.rates(),
                          "rates_window_s": RATE_WINDOW_S, "latency": sampler.latency(), "types": sampler.types(),
                          "event_loop_blocked": {"blocks": blocks.count, "seconds": blocks.sum_ms / 1000}})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return json_response({"status": "ok"})


async def history(request: web.Request) -> web.Response:
    """GET /history: the sampler's points since the monitor started (at most 15 minutes)."""
    return json_response(watched(request).sampler.history())


async def events(request: web.Request) -> web.StreamResponse:
    """GET /events: Server-Sent Events, one ``sample`` event per reading (about one a second)."""
    sampler = watched(request).sampler
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    seq = 0  # tick 0 has no reading: wait for the first one
    with contextlib.suppress(ConnectionResetError):
        await response.write(b"retry: 2000\n\n")
        while not sampler.closed.is_set():
            newest = await sampler.wait_after(seq, KEEPALIVE_S)
            if newest == seq:
                await response.write(b": keep-alive\n\n")
                continue
            seq = newest
            await response.write(b"event: sample\ndata: " + orjson.dumps(sampler.event()) + b"\n\n")
    return response


async def prometheus(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text exposition of every watched queue, read from Redis."""
    all_ = list(request.app[WATCHED].values())
    desired = autoscale.DesiredWorkers([
        (w.queue.name, autoscale.from_samples(w.sampler.samples, w.queue.settings.target_lag)) for w in all_])
    body = await metrics.render([w.queue for w in all_], desired)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def workers(request: web.Request) -> web.Response:
    """GET /workers: every live worker process with its heartbeat age."""
    return json_response({"workers": await metrics.read_workers(watched(request).queue)})


# -- dead letters -------------------------------------------------------------------------


def _filter(params: Any) -> DeadFilter:
    """The type/reason filter from query parameters or a JSON body ('' = any)."""
    values = {}
    for name in ("type", "reason"):
        value = params.get(name)
        if value is not None and not isinstance(value, str):
            raise web.HTTPBadRequest(reason=f"'{name}' must be a string")
        values[name] = value or None
    return DeadFilter(**values)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"'{name}' must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(reason=f"'{name}' must be from {low} to {high}")
    return value


async def dead_list(request: web.Request) -> web.Response:
    """GET /dead?type=&reason=&offset=&limit=&facets=1: a page of dead tasks, newest first."""
    page = await deadletter.page(
        watched(request).queue, _filter(request.query),
        offset=_int_param(request, "offset", 0, 0, 10**9),
        limit=_int_param(request, "limit", 20, 1, deadletter.MAX_LIMIT),
        facets=request.query.get("facets", "") in ("1", "true", "yes"),
    )
    return json_response(page)


async def dead_show(request: web.Request) -> web.Response:
    """GET /dead/{id}: the full record of one dead task (payload, error, timestamps)."""
    task_id = request.match_info["id"]
    try:
        return json_response(await deadletter.show(watched(request).queue, task_id))
    except TaskNotFound:
        return error(404, f"no task {task_id!r} in the dead-letter queue")


def _editor(request: web.Request, body: dict[str, Any]) -> str:
    """Who made an edit, for the record: the body's "by" (a name) with how they authenticated."""
    name = body.get("by")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_BY):
        raise web.HTTPBadRequest(reason=f"'by' must be a string of 1 to {MAX_BY} characters")
    role = request.get(ROLE) or "no"
    return f"{name + ' ' if name else ''}(monitor, {role} token, from {request.remote or '?'})"


async def dead_edit(request: web.Request) -> web.Response:
    """PATCH /dead/{id} {payload, by?}: change a dead task's payload; the edit is recorded on it."""
    task_id = request.match_info["id"]
    body = await _body(request)
    if "payload" not in body:
        return error(400, "body must be a JSON object with the new \"payload\" (any JSON value)")
    if not await deadletter.edit(watched(request).queue, task_id, body["payload"], _editor(request, body)):
        return error(404, f"no task {task_id!r} in the dead-letter queue")
    return json_response(await deadletter.show(watched(request).queue, task_id))


async def dead_requeue_one(request: web.Request) -> web.Response:
    """POST /dead/{id}/requeue {payload?, by?}: send one dead task back to pending with a fresh
    retry budget, with a new payload first when one is given (the edit is recorded)."""
    task_id = request.match_info["id"]
    queue = watched(request).queue
    body = await _body(request)
    if "payload" in body:
        done = await deadletter.edit(queue, task_id, body["payload"], _editor(request, body), requeue=True)
    else:
        done = await deadletter.requeue_one(queue, task_id)
    if not done:
        return error(404, f"no task {task_id!r} in the dead-letter queue")
    return json_response({"status": "requeued", "task_id": task_id, "requeued": 1, "edited": "payload" in body})


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON object body ({} when there is none); 400 for anything else."""
    if not request.can_read_body:
        return {}
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object like {\"type\": ..., \"rate\": ...}")
    return body


async def _options(request: web.Request) -> dict[str, Any]:
    """Options of a bulk action: a JSON object body, or else the query string."""
    return await _body(request) if request.can_read_body else dict(request.query)


def _rate(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = -1.0
    if isinstance(value, bool) or not 0 < rate <= MAX_RATE:
        raise web.HTTPBadRequest(reason=f"'rate' must be a number of tasks per second above 0 and at most {MAX_RATE:g}")
    return rate


async def dead_requeue_many(request: web.Request) -> web.Response:
    """POST /dead/requeue {type?, reason?, rate?}: requeue all (or matching) dead tasks.

    Runs in the background and answers 202 with the job; follow it at ``/jobs/{id}``.
    """
    options = await _options(request)
    job = watched(request).replays.start(_filter(options), _rate(options.get("rate")))
    return json_response(job.view(), 202, {"Location": f"jobs/{job.id}"})


async def dead_delete_one(request: web.Request) -> web.Response:
    """DELETE /dead/{id}: delete one dead task and its record."""
    task_id = request.match_info["id"]
    if not await deadletter.delete_one(watched(request).queue, task_id):
        return error(404, f"no task {task_id!r} in the dead-letter queue")
    return json_response({"status": "deleted", "task_id": task_id, "deleted": 1})


async def dead_purge(request: web.Request) -> web.Response:
    """DELETE /dead?type=&reason=: delete every dead task (or those matching)."""
    flt = _filter(request.query)
    deleted = await deadletter.purge(watched(request).queue, flt)
    return json_response({"status": "purged", "deleted": deleted, "filter": {"type": flt.type, "reason": flt.reason}})


# -- pause and resume -----------------------------------------------------------------------


def _paused_target(request: web.Request) -> tuple[Queue, str | None]:
    """The queue of a pause/resume path (400 if it cannot be a queue name, 404 if not watched) and ?type."""
    name = request.match_info["queue"]
    try:
        check_queue_name(name)
    except ConfigError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    all_ = request.app[WATCHED]
    if name not in all_:
        raise web.HTTPNotFound(reason=f"this monitor does not watch a queue {name!r}; it watches {', '.join(all_)}")
    task_type = request.query.get("type")
    try:
        pausing.field(task_type)
    except InvalidTask as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    return all_[name].queue, task_type


async def pause(request: web.Request) -> web.Response:
    """POST /queues/{queue}/pause?type=T {by?}: stop workers claiming the queue's tasks (or one type's)."""
    queue, task_type = _paused_target(request)
    now, since = await queue.pause(task_type, _editor(request, await _body(request)))
    return json_response({"status": "paused" if now else "already paused", "queue": queue.name, "type": task_type,
                          "since_ms": since, "paused": (await queue.paused())})


async def resume(request: web.Request) -> web.Response:
    """POST /queues/{queue}/resume?type=T: let workers claim again; a type's held tasks go back to pending."""
    queue, task_type = _paused_target(request)
    was, moved = await queue.resume(task_type)
    return json_response({"status": "resumed" if was else "not paused", "queue": queue.name, "type": task_type,
                          "requeued_held": moved, "paused": (await queue.paused())})


# -- flow limits ------------------------------------------------------------------------------


def _limited_type(request: web.Request) -> str:
    try:
        return pausing.field(request.match_info["type"])
    except InvalidTask as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None


async def limits_list(request: web.Request) -> web.Response:
    """GET /limits?queue=: every type of the queue with limits: effective, declared, set, and set aside now."""
    queue = watched(request).queue
    return json_response({"queue": queue.name, "types": await queue.limits()})


async def limits_put(request: web.Request) -> web.Response:
    """PUT /limits/{type}?queue= {rate?, key_concurrency?, ordered?}: change the type's limits at run time.

    The fields given replace those set before (the rest stay); ``null`` switches a field off,
    the declared one included, until ``DELETE``. Workers apply it at their next claim.
    """
    queue, task_type = watched(request).queue, _limited_type(request)
    try:
        view = await queue.set_limits(task_type, limits.layer(await _body(request)))
    except InvalidTask as exc:
        return error(400, str(exc))
    return json_response({"status": "set", "queue": queue.name, "type": task_type, "limits": view})


async def limits_delete(request: web.Request) -> web.Response:
    """DELETE /limits/{type}?queue=: drop the run-time limits of the type; what its code declares applies again."""
    queue, task_type = watched(request).queue, _limited_type(request)
    await queue.write_limits("set", {task_type: None})
    view = (await queue.limits([task_type]))[task_type]
    return json_response({"status": "cleared", "queue": queue.name, "type": task_type, "limits": view})


async def schedules_list(request: web.Request) -> web.Response:
    """GET /schedules?queue=: the queue's periodic schedules (next and last run, paused, counts), for the page.

    Defining, triggering and pausing them is the producer API's (``PUT /schedules/{name}`` ...) and
    ``reliq schedule``'s.
    """
    queue = watched(request).queue
    return json_response({"queue": queue.name, "schedules": await schedules.read(queue)})


async def jobs(request: web.Request) -> web.Response:
    """GET /jobs: recent and running requeue jobs, newest first."""
    return json_response({"jobs": watched(request).replays.views()})


async def job(request: web.Request) -> web.Response:
    """GET /jobs/{id}: one requeue job's progress."""
    found = watched(request).replays.jobs.get(request.match_info["id"])
    return json_response(found.view()) if found else error(404, f"no job {request.match_info['id']!r}")


async def job_cancel(request: web.Request) -> web.Response:
    """DELETE /jobs/{id}: stop a running requeue job (tasks already requeued stay requeued)."""
    found = watched(request).replays.cancel(request.match_info["id"])
    return json_response(found.view()) if found else error(404, f"no job {request.match_info['id']!r}")


# -- the application -------------------------------------------------------------------


def page_paths() -> tuple[str, ...]:
    """Paths of the page and its static files (open even with ``--private``: they hold no data)."""
    return ("/", *(f"/static/{p.name}" for p in STATIC.iterdir() if p.is_file()))


def access(settings: Settings) -> Access | None:
    """The monitor's access rules for ``settings``; None when there is no token to check.

    Without a token everything is open (loopback, or ``--insecure``). With one, writes
    need it; reads need a token (the write or the read one) when ``--private``, or when
    listening beyond loopback without ``--public-read``. ``--public-metrics`` opens
    /metrics alone. The page and its static files are always open: they hold no data.
    """
    if not settings.api_token:
        return None
    open_paths = {*page_paths(), "/healthz"}
    if settings.public_metrics:
        open_paths.add("/metrics")
    open_reads = not settings.private and (is_loopback(settings.host) or settings.public_read)
    return Access(settings.api_token, settings.read_token, frozenset(open_paths), open_reads)


def _middlewares(settings: Settings) -> list[Any]:
    middlewares: list[Any] = [errors_as_json]
    rules = access(settings)
    if rules:
        middlewares.append(access_guard(rules))
    return middlewares


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Run the samplers while the app serves; stop them and running replays on the way out."""
    samplers = [asyncio.create_task(w.sampler.run(), name=f"monitor-sampler-{name}")
                for name, w in app[WATCHED].items()]
    yield
    # cancel_all, not one cancel and a gather: on Python 3.11 a cancellation that lands
    # while redis-py's timeout fires is lost, and the sampler then ran on for ever,
    # holding the shutdown (seen as a hung test teardown, about one run in three).
    await cancel_all(samplers)
    for w in app[WATCHED].values():
        await w.replays.close()


async def _release_streams(app: web.Application) -> None:
    # Open SSE streams would hold the shutdown for its whole timeout: end them first.
    for w in app[WATCHED].values():
        await w.sampler.close()


def create_app(queue: Queue, settings: Settings) -> web.Application:
    """The monitor as an aiohttp application: ``queue``, and any other of ``settings.queues``."""
    app = web.Application(middlewares=_middlewares(settings))
    names = [queue.name, *(n for n, _ in settings.weighted_queues() if n != queue.name)]
    all_ = {n: Queue(queue.redis, settings, n) if n != queue.name else queue for n in names}
    app[WATCHED] = {n: Watched(q, Sampler(q), Replays(q)) for n, q in all_.items()}
    app[SAMPLER] = app[WATCHED][queue.name].sampler
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_release_streams)
    r = app.router
    r.add_get("/", index)
    r.add_static("/static", STATIC)
    r.add_get("/healthz", healthz)
    r.add_get("/queues", queues)
    r.add_get("/stats", stats)
    r.add_get("/history", history)
    r.add_get("/events", events)
    r.add_get("/metrics", prometheus)
    r.add_get("/workers", workers)
    r.add_get("/dead", dead_list)
    r.add_delete("/dead", dead_purge)
    r.add_post("/dead/requeue", dead_requeue_many)
    r.add_get("/dead/{id}", dead_show)
    r.add_delete("/dead/{id}", dead_delete_one)
    r.add_patch("/dead/{id}", dead_edit)
    r.add_post("/dead/{id}/requeue", dead_requeue_one)
    r.add_post("/queues/{queue:[^/]+}/pause", pause)
    r.add_post("/queues/{queue:[^/]+}/resume", resume)
    r.add_get("/limits", limits_list)
    r.add_put("/limits/{type}", limits_put)
    r.add_delete("/limits/{type}", limits_delete)
    r.add_get("/schedules", schedules_list)
    browse.add_routes(r, lambda request: watched(request).queue)
    tasks.add_routes(r, lambda request: watched(request).queue)
    r.add_get("/jobs", jobs)
    r.add_get("/jobs/{id}", job)
    r.add_delete("/jobs/{id}", job_cancel)
    return app
