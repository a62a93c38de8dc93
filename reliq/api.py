"""The producer API (``reliq serve``): validates requests and hands them to the queue.

A task is answered 202 only after the enqueue script has run on Redis. Requests that
arrive while an enqueue is in flight are sent together in the next script call, so
concurrent producers share round trips (see :class:`Coalescer`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from reliq.coalescer import Coalescer
from reliq.errors import CancelRefused, InvalidTask, TaskNotFound
from reliq.queue import Queue, TaskSpec, make_spec
from reliq.settings import Settings
from reliq.web import bearer_auth, error, errors_as_json, json_response

QUEUE = web.AppKey("queue", Queue)
COALESCER = web.AppKey("coalescer", Coalescer)
MAX_BATCH = 1000


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason=f"Content-Type must be application/json, not {request.content_type!r}"
        )
    body = await request.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None


def _spec(request: web.Request, item: Any, idempotency_key: str | None) -> TaskSpec:
    if not isinstance(item, dict):
        raise InvalidTask("a task must be a JSON object with a 'type'")
    settings = request.app[QUEUE].settings
    return make_spec(
        item.get("type"),
        item.get("payload"),
        max_retries=item.get("max_retries"),
        timeout=item.get("timeout_s"),
        delay=item.get("delay_s"),
        idempotency_key=item.get("idempotency_key", idempotency_key),
        default_max_retries=settings.max_retries,
    )


def _accepted(spec: TaskSpec, task_id: str, created: bool) -> dict[str, Any]:
    return {"status": "queued" if created else "duplicate", "task_id": task_id,
            "state": "scheduled" if spec.delay_ms else "pending"}


async def post_task(request: web.Request) -> web.Response:
    """POST /task: enqueue one task; 202 with its id (200 for a repeated Idempotency-Key)."""
    body = await _json_body(request)
    try:
        spec = _spec(request, body, request.headers.get("Idempotency-Key"))
    except InvalidTask as exc:
        return error(400, str(exc))
    task_id, created = await request.app[COALESCER].submit(spec)
    return json_response(_accepted(spec, task_id, created), 202 if created else 200)


async def post_tasks(request: web.Request) -> web.Response:
    """POST /tasks: enqueue up to 1,000 tasks in one script call, all or nothing."""
    body = await _json_body(request)
    items = body.get("tasks") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        return error(400, "body must be a non-empty JSON array of tasks, or {\"tasks\": [...]}")
    if len(items) > MAX_BATCH:
        return error(400, f"at most {MAX_BATCH} tasks a request, got {len(items)}")
    try:
        specs = [_spec(request, item, None) for item in items]
    except InvalidTask as exc:
        return error(400, str(exc))
    results = await request.app[QUEUE].enqueue_specs(specs)
    return json_response(
        {"status": "queued", "task_ids": [task_id for task_id, _ in results],
         "tasks": [_accepted(s, i, c) for s, (i, c) in zip(specs, results, strict=True)]},
        202,
    )


async def get_task(request: web.Request) -> web.Response:
    """GET /task/{id}: the task's state, attempts, timestamps, error and result."""
    try:
        return json_response(await request.app[QUEUE].get(request.match_info["id"]))
    except TaskNotFound:
        return error(404, f"no task {request.match_info['id']!r} (never enqueued, or its record expired)")


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /task/{id}: cancel a pending or scheduled task; 409 once it has started."""
    task_id = request.match_info["id"]
    try:
        previous = await request.app[QUEUE].cancel(task_id)
    except TaskNotFound:
        return error(404, f"no task {task_id!r}")
    except CancelRefused as exc:
        return json_response({"error": str(exc), "state": exc.state}, 409)
    return json_response({"status": "cancelled", "task_id": task_id, "previous_state": previous})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: Redis answers (503 otherwise, through the error middleware)."""
    await asyncio.wait_for(request.app[QUEUE].redis.ping(), 2.0)
    return json_response({"status": "ready"})


def create_app(queue: Queue, settings: Settings) -> web.Application:
    """The producer API as an aiohttp application."""
    middlewares = [errors_as_json]
    if settings.api_token:
        middlewares.append(bearer_auth(settings.api_token, open_paths=("/healthz", "/readyz")))
    app = web.Application(client_max_size=settings.max_body, middlewares=middlewares)
    app[QUEUE] = queue
    app[COALESCER] = Coalescer(queue.enqueue_specs, MAX_BATCH)
    app.router.add_post("/task", post_task)
    app.router.add_post("/tasks", post_tasks)
    app.router.add_get("/task/{id}", get_task)
    app.router.add_delete("/task/{id}", delete_task)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
