"""The worker's liveness endpoint, ``GET /healthz``: a lone worker's, or its supervisor's."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from reliq.web import json_response


class Supervised(Protocol):
    """What /healthz asks a supervisor (:class:`reliq.worker.supervisor.Supervisor`)."""

    def healthy(self) -> bool: ...

    def status(self) -> dict[str, object]: ...


SUPERVISOR = web.AppKey("supervisor", Supervised)


async def _healthz(request: web.Request) -> web.Response:
    """GET /healthz: this process's event loop answers (and, in a supervisor, no child crash-loops)."""
    supervisor = request.app.get(SUPERVISOR)
    if supervisor is None:
        return json_response({"status": "ok"})
    return json_response(supervisor.status(), 200 if supervisor.healthy() else 503)


def health_app(supervisor: Supervised | None = None) -> web.Application:
    """The worker's liveness endpoint, ``GET /healthz``.

    In a lone worker process it is served from the worker's own event loop, so it fails
    when that loop is stuck (a handler blocking it), not when Redis is away: restarting a
    worker does not bring Redis back.
    """
    app = web.Application()
    if supervisor is not None:
        app[SUPERVISOR] = supervisor
    app.router.add_get("/healthz", _healthz)
    return app
