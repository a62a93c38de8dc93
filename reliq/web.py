"""What the API and the monitor share: JSON responses, errors as JSON, bearer auth, cancel answers."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import OutOfMemoryError

from reliq.connection import UNAVAILABLE, describe_outage
from reliq.errors import CancelRefused, TaskNotFound

if TYPE_CHECKING:
    from reliq.queue import Queue

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return json_response({"error": message}, status, headers)


async def cancel_answer(queue: Queue, task_id: str, forget: bool) -> web.Response:
    """Cancel a task and answer as POST /task/{id}/cancel (``forget`` False) or DELETE /task/{id} do.

    200 cancelled (or deleted), 202 when it runs (its worker was asked to stop it:
    docs/cancel.md), 404 when there is no such task, 409 with its state once it has ended.
    The producer API and the monitor's dashboard answer alike.
    """
    try:
        previous = await queue.cancel(task_id, forget)
    except TaskNotFound:
        return error(404, f"no task {task_id!r} in queue {queue.name!r}")
    except CancelRefused as exc:
        return json_response({"error": str(exc), "state": exc.state}, 409)
    if previous == "processing":
        return json_response({"status": "cancelling", "task_id": task_id, "previous_state": previous}, 202)
    return json_response({"status": "deleted" if forget else "cancelled", "task_id": task_id,
                          "previous_state": previous})


class BadRequestsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (a NUL in a header, say) with a traceback: make it a
    one-line warning. The client already got its 400; bad input is not our failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code == 400:
            record.msg, record.args = "%s: %s", (record.getMessage(), str(exc).replace("\n", " ").strip())
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_bad_requests() -> None:
    """Install :class:`BadRequestsInOneLine` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestsInOneLine) for f in server_log.filters):
        server_log.addFilter(BadRequestsInOneLine())


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
        # A 405 must say what is allowed (RFC 9110): keep aiohttp's Allow header.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, exc.reason, allow)
    except OutOfMemoryError as exc:  # a write Redis refused at its maxmemory (enqueue answers 507 itself)
        log.warning("%s %s: %s", request.method, request.path, describe_outage(exc))
        return error(507, "Redis is out of memory (maxmemory reached); retry once workers have drained it",
                     {"Retry-After": "5"})
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


#: Methods that only read (a read token may use them).
READ_METHODS = ("GET", "HEAD", "OPTIONS")
#: request[ROLE]: who a request authenticated as: "write", "read" or "" (no token).
ROLE = web.RequestKey("reliq_role", str)


@dataclass(frozen=True)
class Access:
    """Who may do what on the monitor: a write token, an optional read-only token, open parts.

    ``open_paths`` never need a token (the page and its files hold no data, /healthz).
    ``open_reads``: reads pass without a token. Writes always need the write token: a
    read token gets 403 (it is known, but may not write), no or a wrong token 401.
    """

    write_token: str
    read_token: str = ""
    open_paths: frozenset[str] = frozenset()
    open_reads: bool = False

    def role(self, authorization: str) -> str:
        """"write", "read" or "" for an Authorization header (compared in constant time)."""
        given = authorization.encode()
        if hmac.compare_digest(given, f"Bearer {self.write_token}".encode()):
            return "write"
        if self.read_token and hmac.compare_digest(given, f"Bearer {self.read_token}".encode()):
            return "read"
        return ""

    def refusal(self, method: str, path: str, role: str) -> tuple[int, str] | None:
        """(status, message) when this request may not go ahead, else None."""
        if role == "write" or path in self.open_paths:
            return None
        if method in READ_METHODS:
            return None if role == "read" or self.open_reads else (401, "missing or wrong bearer token")
        if role == "read":
            return 403, "this token may only read; writes need RELIQ_API_TOKEN"
        return 401, "missing or wrong bearer token"


def access_guard(access: Access) -> Any:
    """Middleware enforcing ``access``; it records the caller's role as ``request[ROLE]``."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        role = access.role(request.headers.get("Authorization", ""))
        refused = access.refusal(request.method, request.path, role)
        if refused:
            status, message = refused
            return error(status, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None)
        request[ROLE] = role
        return await handler(request)

    return check
