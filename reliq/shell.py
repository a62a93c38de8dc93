"""``reliq enqueue``, ``reliq task`` and ``reliq task cancel``: produce, inspect and cancel tasks from a shell.

Exit codes (documented in README.md, "From the shell"):

- 0: enqueued (without ``--wait``), or the task succeeded; ``reliq task``: found;
  ``reliq task cancel``: cancelled, or (running) its worker asked to stop it, and with
  ``--wait`` it ended cancelled
- 1: the task ended dead or cancelled; ``reliq task``: no such task; ``reliq task
  cancel``: no such task, it had ended already, or it ended otherwise (it succeeded first)
- 2: bad input (payload not JSON, bad type, bad ``--run-at``...): nothing was written
- 3: Redis unreachable
- 124: ``--wait`` ran out before the task ended (the exit code of ``timeout(1)``)
"""

from __future__ import annotations

from typing import Any

import orjson
from rich.console import Console

from reliq.connection import UNAVAILABLE, connect
from reliq.errors import CancelRefused, InvalidTask, QueueFull, TaskNotFound
from reliq.eventloop import run
from reliq.formats import Enqueued, TaskState
from reliq.queue import END_STATES, Queue, TaskInfo, make_spec
from reliq.settings import Settings
from reliq.waiting import Waiters

SUCCEEDED, FAILED, BAD_INPUT, UNREACHABLE, TIMED_OUT = 0, 1, 2, 3, 124

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(data: Any) -> None:
    out.print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode(), markup=False)


def _outcome(info: TaskInfo) -> int:
    """Print how a waited-for task ended (result on stdout, error on stderr); its exit code."""
    state = info["state"]
    if state == TaskState.SUCCEEDED:
        _print_json(info["result"])
        return SUCCEEDED
    if state == TaskState.DEAD:
        err.print(f"reliq: task {info['task_id']} is dead ({info['reason']}): {info['last_error']}", markup=False)
        return FAILED
    if state == TaskState.CANCELLED:
        err.print(f"reliq: task {info['task_id']} was cancelled", markup=False)
        return FAILED
    err.print(f"reliq: task {info['task_id']} is still {state}; the wait ran out", markup=False)
    return TIMED_OUT


async def _waited(queue: Queue, task_id: str, wait: float | None) -> TaskInfo:
    waiters = Waiters(queue.settings.redis_url, max_waiters=1)
    try:
        return await waiters.wait(queue, task_id, wait)
    finally:
        await waiters.close()


def _with_queue(settings: Settings, body: Any) -> int:
    """Run ``body(queue)`` on a short-lived client; an outage of Redis is one line and exit 3."""

    async def main() -> int:
        redis = connect(settings.redis_url, max_connections=2)
        try:
            code: int = await body(Queue(redis, settings))
            return code
        except UNAVAILABLE as exc:
            err.print(f"reliq: cannot reach Redis at {settings.redis_url}: {exc}", markup=False)
            return UNREACHABLE
        finally:
            await redis.aclose()

    return run(main)


def enqueue(settings: Settings, type: str, payload: str | None, wait: float | None, waiting: bool,
            **options: Any) -> int:
    """``reliq enqueue``: print the new task's id; with ``waiting``, wait and print how it ended.

    ``wait`` is the longest wait in seconds (None: until the task ends). Everything is
    checked before Redis is contacted, so bad input writes nothing.
    """
    try:
        body = None if payload is None else orjson.loads(payload)
        spec = make_spec(type, body, **options)
    except orjson.JSONDecodeError as exc:
        err.print(f"reliq: the payload is not valid JSON: {exc}", markup=False)
        return BAD_INPUT
    except InvalidTask as exc:
        err.print(f"reliq: {exc}", markup=False)
        return BAD_INPUT

    async def go(queue: Queue) -> int:
        try:
            [(task_id, fate)] = await queue.enqueue_specs([spec])
        except QueueFull as exc:
            err.print(f"reliq: {exc}", markup=False)
            return FAILED
        if fate == Enqueued.EXISTING:
            err.print(f"reliq: a live task of the same type and unique key stands for it: {task_id}", markup=False)
        if not waiting:
            out.print(task_id, markup=False)
            return SUCCEEDED
        err.print(f"reliq: enqueued {task_id} in {queue.name!r}; waiting for it to end", markup=False)
        return _outcome(await _waited(queue, task_id, wait))

    return _with_queue(settings, go)


def task(settings: Settings, task_id: str, wait: float | None, waiting: bool) -> int:
    """``reliq task ID``: print the task's record as JSON (with ``waiting``, once it has ended)."""

    async def go(queue: Queue) -> int:
        try:
            info = await _waited(queue, task_id, wait) if waiting else await queue.get(task_id)
        except TaskNotFound:
            err.print(f"reliq: no task {task_id!r} in queue {queue.name!r} (never enqueued, or its record "
                      "expired)", markup=False)
            return FAILED
        _print_json(info)
        return TIMED_OUT if waiting and info["state"] not in END_STATES else SUCCEEDED

    return _with_queue(settings, go)


def cancel(settings: Settings, task_id: str, forget: bool, wait: float | None, waiting: bool) -> int:
    """``reliq task cancel ID``: cancel the task, print what the API would answer (with ``waiting``: its end).

    A running task ends once its worker has stopped it; ``waiting`` waits for that and
    prints the final record (none with ``forget``: it is gone).
    """

    async def go(queue: Queue) -> int:
        try:
            previous = await queue.cancel(task_id, forget)
        except TaskNotFound:
            err.print(f"reliq: no task {task_id!r} in queue {queue.name!r}", markup=False)
            return FAILED
        except CancelRefused as exc:
            err.print(f"reliq: task {task_id} is {exc.state}: it has ended already, nothing to cancel", markup=False)
            return FAILED
        if previous != "processing":
            _print_json({"status": "deleted" if forget else "cancelled", "task_id": task_id,
                         "previous_state": previous})
            return SUCCEEDED
        if not waiting:
            _print_json({"status": "cancelling", "task_id": task_id, "previous_state": previous})
            return SUCCEEDED
        err.print(f"reliq: task {task_id} is running: its worker was asked to stop it; waiting", markup=False)
        try:
            info = await _waited(queue, task_id, wait)
        except TaskNotFound:  # --delete: the record went with the cancel
            _print_json({"status": "deleted", "task_id": task_id, "previous_state": previous})
            return SUCCEEDED
        _print_json(info)
        if info["state"] not in END_STATES:
            return TIMED_OUT
        return SUCCEEDED if info["state"] == "cancelled" else FAILED

    return _with_queue(settings, go)
