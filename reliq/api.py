"""The producer API (``reliq serve``): validates requests and hands them to the queues.

A task is answered 202 only after the enqueue script has run on Redis (and, with
``"durability": "replicated"``, after a replica confirmed it). Requests that arrive
while an enqueue is in flight are sent together in the next script call, so
concurrent producers share round trips (see :class:`~reliq.coalescer.Coalescer`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from reliq import tracing
from reliq.coalescer import Coalescer
from reliq.errors import (
    ConfigError,
    InvalidTask,
    NotReplicated,
    QueueFull,
    RedisFull,
    TaskNotFound,
    TooManyWaiters,
)
from reliq.formats import Enqueued, TaskState
from reliq.openapi import spec as openapi_spec
from reliq.queue import Queue, TaskSpec, make_spec
from reliq.settings import DURABILITIES, Settings, check_queue_name
from reliq.waiting import MAX_WAIT_S, Waiters
from reliq.web import bearer_auth, cancel_answer, error, errors_as_json, json_response

MAX_BATCH = 1000
#: Retry-After of a 507: a worker frees the room of a batch of tasks in well under this.
RETRY_FULL_S = 5
#: Longest idempotency key, in the header or the body.
MAX_IDEMPOTENCY_KEY = 200
#: Queue objects the API keeps at most (a name is cheap, but not free), each with its
#: coalescers: past it the oldest but the default queue's go (made again if asked for).
MAX_QUEUES = 1000
#: Bound once: read a task, and a member looked up on its enum costs ~0.25 us on Python 3.11.
SCHEDULED, PENDING = TaskState.SCHEDULED, TaskState.PENDING
CREATED = Enqueued.CREATED

#: (task id, what became of the task, replicas that confirmed it)
Result = tuple[str, Enqueued, int]


class Producer:
    """The API's side of the queues: one Queue, and one Coalescer a durability, per name."""

    def __init__(self, queue: Queue) -> None:
        self.redis: Redis = queue.redis
        self.settings: Settings = queue.settings
        self._queues: dict[str, Queue] = {queue.name: queue}
        #: queue name -> durability -> its coalescer; only of names in ``_queues``, evicted with them
        self._coalescers: dict[str, dict[str, Coalescer[TaskSpec, Result]]] = {}
        self.waiters = Waiters(self.settings.redis_url, self.settings.max_waiters)

    def queue(self, name: Any) -> Queue:
        """The Queue called ``name`` (the default queue for None); InvalidTask for a bad name."""
        if name is None:
            name = self.settings.queue
        try:
            check_queue_name(name)
        except ConfigError as exc:
            raise InvalidTask(str(exc)) from None
        if name not in self._queues:
            if len(self._queues) >= MAX_QUEUES:
                oldest = next(k for k in self._queues if k != self.settings.queue)
                for part in self._queues.pop(oldest).parts_now():
                    self._coalescers.pop(part.name, None)  # a batch in flight finishes: its drain holds it
            self._queues[name] = Queue(self.redis, self.settings, name)
        return self._queues[name]

    async def send(self, queue: Queue, specs: Sequence[TaskSpec], durability: str) -> list[Result]:
        """Enqueue ``specs`` in one script call; report how many replicas confirmed them."""
        replicas = 1 if durability == "replicated" else 0
        try:
            results = await queue.enqueue_specs(specs, replicas=replicas)
        except NotReplicated as exc:
            return [(task_id, Enqueued(fate), exc.acked) for task_id, fate in exc.results]
        return [(task_id, fate, replicas) for task_id, fate in results]

    async def submit(self, queue: Queue, spec: TaskSpec, durability: str) -> Result:
        """Enqueue one task, sharing the round trip with concurrent requests (of its partition: a
        coalesced call is one script, on one partition's slot)."""
        queue, [spec] = await queue.place([spec])
        lanes = self._coalescers.get(queue.name)
        if lanes is None:
            if queue.of not in self._queues:
                self.queue(queue.of)  # evicted since the request looked it up: cached again, bounded
            lanes = self._coalescers[queue.name] = {}
        coalescer = lanes.get(durability)
        if coalescer is None:
            coalescer = lanes[durability] = Coalescer(lambda specs: self.send(queue, specs, durability), MAX_BATCH)
        return await coalescer.submit(spec)


PRODUCER = web.AppKey("producer", Producer)
#: The OpenAPI document of this app's configuration (with or without a token).
OPENAPI = web.AppKey("openapi", dict[str, Any])


async def json_body(request: web.Request) -> Any:
    """The request's JSON body; 415 when it is not JSON, 400 when it does not parse."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason=f"Content-Type must be application/json, not {request.content_type!r}"
        )
    body = await request.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None


def _spec(item: Any, idempotency_key: str | None, trace: str) -> TaskSpec:
    if not isinstance(item, dict):
        raise InvalidTask("a task must be a JSON object with a 'type'")
    return make_spec(
        item.get("type"),
        item.get("payload"),
        max_retries=item.get("max_retries"),
        timeout=item.get("timeout_s"),
        delay=item.get("delay_s"),
        run_at=item.get("run_at"),
        idempotency_key=item.get("idempotency_key", idempotency_key),
        unique=item.get("unique"),
        unique_key=item.get("unique_key"),
        priority=item.get("priority"),
        key=item.get("key"),
        trace=trace,
    )


def _idempotency_header(request: web.Request) -> str | None:
    """The Idempotency-Key header, checked even when the body names a key of its own."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidTask(f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def _durability(settings: Settings, body: dict[str, Any]) -> str:
    durability = body.get("durability", settings.durability)
    if durability not in DURABILITIES:
        raise InvalidTask(f"'durability' must be one of {', '.join(DURABILITIES)}")
    return str(durability)


#: Why an enqueue answered with an earlier task's id (the "duplicate" field).
_DUPLICATE = {Enqueued.REPEATED: "idempotency_key", Enqueued.EXISTING: "unique"}


def _accepted(queue: Queue, spec: TaskSpec, result: Result) -> dict[str, Any]:
    task_id, fate, acked = result
    answer = {"status": "queued" if fate == CREATED else "duplicate", "task_id": task_id, "queue": queue.name,
              "state": SCHEDULED if spec.delay_ms or spec.run_at_ms else PENDING,
              "durability": "replicated" if acked else "memory"}
    if fate != CREATED:
        answer["duplicate"] = _DUPLICATE[fate]
    return answer


def _not_replicated(body: dict[str, Any]) -> web.Response:
    return json_response({**body, "error": "enqueued on the primary, but no replica confirmed it in time; "
                                           "retry with the same Idempotency-Key to be safe"},
                         503, {"Retry-After": "1"})


async def post_task(request: web.Request) -> web.Response:
    """POST /task: enqueue one task; 202 with its id (200 with an earlier task's: see ``_accepted``)."""
    producer = request.app[PRODUCER]
    body = await json_body(request)
    if not isinstance(body, dict):
        return error(400, "a task must be a JSON object with a 'type'")
    queue = producer.queue(body.get("queue"))
    with tracing.sending(queue.name, request.headers.get("traceparent")) as trace:
        spec = _spec(body, _idempotency_header(request), trace)
        durability = _durability(producer.settings, body)
        result = await producer.submit(queue, spec, durability)
    answer = _accepted(queue, spec, result)
    if durability == "replicated" and not result[2]:
        return _not_replicated(answer)
    return json_response(answer, 202 if result[1] == CREATED else 200)


async def post_tasks(request: web.Request) -> web.Response:
    """POST /tasks: enqueue up to 1,000 tasks of one queue in one script call, all or nothing."""
    producer = request.app[PRODUCER]
    body = await json_body(request)
    envelope = body if isinstance(body, dict) else {"tasks": body}
    items = envelope.get("tasks")
    if not isinstance(items, list) or not items:
        return error(400, "body must be a non-empty JSON array of tasks, or {\"tasks\": [...]}")
    if len(items) > MAX_BATCH:
        return error(400, f"at most {MAX_BATCH} tasks a request, got {len(items)}")
    if any(isinstance(i, dict) and "queue" in i for i in items):
        return error(400, "a batch goes to one queue: name it once, as \"queue\" beside \"tasks\", not in a task")
    queue = producer.queue(envelope.get("queue"))
    durability = _durability(producer.settings, envelope)
    with tracing.sending(queue.name, request.headers.get("traceparent")) as trace:
        specs = [_spec(item, None, trace) for item in items]
        target, placed = await queue.place(specs)  # one partition: all or nothing is one script call
        results = await producer.send(target, placed, durability)
    answer = {"status": "queued", "task_ids": [r[0] for r in results], "queue": queue.name,
              "tasks": [_accepted(queue, s, r) for s, r in zip(specs, results, strict=True)]}
    if durability == "replicated" and not results[0][2]:
        return _not_replicated(answer)
    return json_response(answer, 202)


def known_query(request: web.Request, names: tuple[str, ...]) -> None:
    """Refuse a query parameter the endpoint does not take (a typo would otherwise be ignored)."""
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        raise InvalidTask(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                          f"this endpoint takes {', '.join(names)}")


def _wait_s(raw: str | None) -> float:
    """The ``wait`` query parameter in seconds (0 when absent); InvalidTask when out of range."""
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_WAIT_S:  # NaN fails too
        raise InvalidTask(f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g}, not {raw!r}")
    return wait


async def get_task(request: web.Request) -> web.Response:
    """GET /task/{id}?queue=&wait=: the task's record; with ``wait``, once it has ended (long poll)."""
    producer = request.app[PRODUCER]
    known_query(request, ("queue", "wait"))
    queue = producer.queue(request.query.get("queue") or None)
    wait = _wait_s(request.query.get("wait"))
    try:
        return json_response(await producer.waiters.wait(queue, request.match_info["id"], wait))
    except TooManyWaiters as exc:
        return error(429, str(exc), {"Retry-After": "1"})
    except TaskNotFound:
        return error(404, f"no task {request.match_info['id']!r} in queue {queue.name!r} "
                          "(never enqueued, or its record expired or was trimmed: see docs/memory.md)")


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /task/{id}?queue=: cancel a task and delete its record; 202 while its worker stops it; 409 once ended."""
    return await _cancel(request, forget=True)


async def cancel_task(request: web.Request) -> web.Response:
    """POST /task/{id}/cancel?queue=: cancel a task, keeping its record; 202 while its worker stops it, 409 if ended."""
    return await _cancel(request, forget=False)


async def _cancel(request: web.Request, forget: bool) -> web.Response:
    known_query(request, ("queue",))
    queue = request.app[PRODUCER].queue(request.query.get("queue") or None)
    return await cancel_answer(queue, request.match_info["id"], forget)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: Redis answers (503 otherwise, through the error middleware)."""
    await asyncio.wait_for(request.app[PRODUCER].redis.ping(), 2.0)
    return json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: this API described in OpenAPI 3.1."""
    return json_response(request.app[OPENAPI])


@web.middleware
async def task_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bad tasks are 400s, a full queue is a 429, a full Redis a 507: each saying what is wrong."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except InvalidTask as exc:
        return error(400, str(exc))
    except QueueFull as exc:
        return error(429, str(exc), {"Retry-After": "1"})
    except RedisFull as exc:
        return error(507, str(exc), {"Retry-After": str(RETRY_FULL_S)})


def create_app(queue: Queue, settings: Settings) -> web.Application:
    """The producer API as an aiohttp application."""
    middlewares = [errors_as_json, task_errors]
    if settings.api_token:
        middlewares.insert(1, bearer_auth(settings.api_token, open_paths=("/healthz", "/readyz")))
    app = web.Application(client_max_size=settings.max_body, middlewares=middlewares)
    app[PRODUCER] = producer = Producer(queue)

    async def close_waiters(app: web.Application) -> None:
        await producer.waiters.close()

    app.on_cleanup.append(close_waiters)
    app[OPENAPI] = openapi_spec(auth=bool(settings.api_token))
    app.router.add_post("/task", post_task)
    app.router.add_post("/tasks", post_tasks)
    app.router.add_get("/task/{id}", get_task)
    app.router.add_delete("/task/{id}", delete_task)
    app.router.add_post("/task/{id}/cancel", cancel_task)
    # imported here: the schedule routes use this module's helpers
    from reliq.api_schedules import add_routes as add_schedule_routes

    add_schedule_routes(app.router)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
