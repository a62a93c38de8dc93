"""The dashboard's view of one task: its record (progress included) and its cancel.

``GET /task/{id}?queue=`` answers the record as the producer API's ``GET /task/{id}``
does, and ``POST /task/{id}/cancel?queue=`` cancels as the API does (a running task: its
worker is asked to stop it, 202), so the page and the API never disagree. A cancel is a
write: with a token set, it needs the write token (reliq/web.py: Access).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from reliq.errors import TaskNotFound
from reliq.queue import Queue
from reliq.web import cancel_answer, error, json_response


def add_routes(router: web.UrlDispatcher, queue_of: Callable[[web.Request], Queue]) -> None:
    """Serve one task's view on ``router``; ``queue_of`` picks the request's queue (``?queue=``)."""

    async def get_task(request: web.Request) -> web.Response:
        """GET /task/{id}?queue=: the task's record, with its progress."""
        queue, task_id = queue_of(request), request.match_info["id"]
        try:
            return json_response(await queue.get(task_id))
        except TaskNotFound:
            return error(404, f"no task {task_id!r} in queue {queue.name!r} (never enqueued, or its record "
                              "expired or was trimmed)")

    async def cancel_task(request: web.Request) -> web.Response:
        """POST /task/{id}/cancel?queue=: cancel the task, keeping its record (202 while its worker stops it)."""
        return await cancel_answer(queue_of(request), request.match_info["id"], forget=False)

    router.add_get("/task/{id}", get_task)
    router.add_post("/task/{id}/cancel", cancel_task)
