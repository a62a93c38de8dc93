"""Redis connections: one place that turns a URL into a client.

Connections are bounded and callers wait for a free one (a blocking pool), because
redis-py's default pool raises instead of waiting when it runs out.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Errors that mean "Redis is not reachable right now": callers back off and retry, or
#: answer 503, instead of failing the task.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def connect(url: str, *, max_connections: int = 16, socket_timeout: float | None = 10.0) -> Redis:
    """A client for ``url`` whose pool holds at most ``max_connections`` connections."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it
