"""The monitor (``reliq monitor``): queue statistics as JSON."""

from __future__ import annotations

from aiohttp import web

from reliq.queue import Queue
from reliq.settings import Settings
from reliq.web import errors_as_json, json_response

QUEUE = web.AppKey("queue", Queue)


async def stats(request: web.Request) -> web.Response:
    """GET /stats: depths (pending, processing, delayed, dead_letter), workers, lag, counters."""
    return json_response(await request.app[QUEUE].snapshot())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return json_response({"status": "ok"})


def create_app(queue: Queue, settings: Settings) -> web.Application:
    """The monitor as an aiohttp application."""
    app = web.Application(middlewares=[errors_as_json])
    app[QUEUE] = queue
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app
