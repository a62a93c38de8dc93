"""Run a coroutine on a fresh event loop: every command's way into asyncio.

Its own module, so the commands that only read (``reliq stats``, ``reliq dlq``,
``reliq bench``) load neither the API nor the worker with it. It also holds what reliq
does about uvloop's one quirk with redis-py: writing to a connection the peer has just
closed raises ``RuntimeError`` (asyncio's own loop raises an ``OSError``, which redis-py
turns into a connection error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

#: The end of the message of uvloop's RuntimeError on a closed transport, and only of it.
CLOSED_TRANSPORT = "; the handler is closed"


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on a fresh event loop (uvloop when installed); return its exit code."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def is_closed_transport(exc: BaseException) -> bool:
    """Whether ``exc`` is uvloop's RuntimeError for a write to a closed connection (nothing else)."""
    return type(exc) is RuntimeError and str(exc).startswith("unable to perform operation on ") \
        and str(exc).endswith(CLOSED_TRANSPORT)


def _closed_transport_safe(base: type[Connection]) -> type[Connection]:
    """``base`` whose writes raise a ConnectionError, not uvloop's RuntimeError, on a closed transport."""

    class Safe(base):  # type: ignore[valid-type,misc]  # a class made from a variable base
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except RuntimeError as exc:  # redis-py has disconnected it already
                if not is_closed_transport(exc):
                    raise
                raise RedisConnectionError(f"Redis closed the connection: {exc}") from exc

    Safe.__name__ = Safe.__qualname__ = f"ClosedTransportSafe{base.__name__}"
    return Safe


def closed_transport_is_connection_error(client: RedisCluster) -> RedisCluster:
    """Make the nodes of ``client`` (the async cluster client) take uvloop's closed-transport
    RuntimeError for the lost connection it is: the client then reloads its slot map, and
    reliq's outage rules (``UNAVAILABLE``) retry, back off or answer 503 — logged once,
    without a traceback. redis-py's cluster client takes no connection class: its nodes,
    the ones it has and the ones it discovers, are given one here."""
    kwargs = client.nodes_manager.connection_kwargs
    kwargs["connection_class"] = _closed_transport_safe(kwargs.get("connection_class", Connection))
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = kwargs["connection_class"]
    return client
