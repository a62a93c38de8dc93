"""What the API and the monitor share: JSON responses, errors as JSON, bearer auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import orjson
from aiohttp import web

from reliq.connection import UNAVAILABLE

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return json_response({"error": message}, status, headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors, Redis outages and bugs into JSON answers."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, f"request body is too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except UNAVAILABLE as exc:
        log.warning("%s %s: Redis unavailable: %s", request.method, request.path, exc)
        return error(503, "Redis is unavailable; retry later", {"Retry-After": "1"})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal error (logged by the server)")


def bearer_auth(token: str, open_paths: Collection[str] = (), open_methods: Collection[str] = ()) -> Any:
    """Middleware requiring ``Authorization: Bearer <token>`` (compared in constant time).

    Requests to ``open_paths`` or with a method in ``open_methods`` pass without it.
    """
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths or request.method in open_methods:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check
