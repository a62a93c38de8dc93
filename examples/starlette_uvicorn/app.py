"""A Starlette (ASGI) app that enqueues one task per request with an AsyncClient from its lifespan.

    uvicorn app:app --host 127.0.0.1 --port 8000

The client is opened when the app starts and closed when it stops, on the server's own
event loop; concurrent requests share its round trips to Redis. FastAPI takes the same
``lifespan``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tasks import make_thumbnail

import reliq


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """One AsyncClient for the app's lifetime."""
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    async with reliq.AsyncClient(url, os.environ.get("RELIQ_QUEUE", "default")) as client:
        app.state.reliq = client
        yield


async def upload(request: Request) -> JSONResponse:
    """Enqueue the thumbnail and answer at once: 202 with the task id."""
    body = await request.json()
    image = body.get("image") if isinstance(body, dict) else None
    if not isinstance(image, str) or not image:
        return JSONResponse({"error": "'image' must be a non-empty string"}, status_code=400)
    client: reliq.AsyncClient = request.app.state.reliq
    task_id = await client.enqueue(make_thumbnail.name, {"image": image})
    return JSONResponse({"task_id": task_id}, status_code=202)


async def task(request: Request) -> JSONResponse:
    """The task's record (state, result, error), or 404."""
    client: reliq.AsyncClient = request.app.state.reliq
    try:
        return JSONResponse(await client.get(request.path_params["task_id"]))
    except reliq.TaskNotFound:
        return JSONResponse({"error": "no such task"}, status_code=404)


app = Starlette(routes=[Route("/upload", upload, methods=["POST"]),
                        Route("/task/{task_id}", task, methods=["GET"])], lifespan=lifespan)
