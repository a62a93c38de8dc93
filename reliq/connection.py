"""Redis connections: one place that turns a URL into a client.

Three kinds of URL:

- ``redis://`` / ``rediss://`` / ``unix://``: one server. Connections are bounded and
  callers wait for a free one (a blocking pool), because redis-py's default pool raises
  instead of waiting when it runs out.
- ``redis+cluster://host:port,host:port`` (``rediss+cluster://`` for TLS): Redis
  Cluster. Every key of a queue shares the ``{queue}`` hash tag, so each queue lives on
  one shard and every script and command of it is routed there by its keys.
- ``redis+sentinel://host:port,host:port/service-name[/db]`` (``rediss+sentinel://``
  for TLS to the primary): the primary that the Sentinels name, followed through
  failovers.

User and password in the URL are those of the data nodes; ``?sentinel_password=`` sets
the Sentinels' own password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.cluster
import redis.retry
import redis.sentinel
from redis._parsers.base import BaseParser
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reliq.errors import ConfigError
from reliq.eventloop import closed_transport_is_connection_error


class RedisBusy(ResponseError):
    """BUSY: Redis is running a script past ``busy-reply-threshold`` (it answers nothing else)."""


# redis-py maps error codes to classes in one table, and BUSY is not in it: without this
# a BUSY reply would be a bare ResponseError, indistinguishable from a bug of ours.
BaseParser.EXCEPTION_CLASSES.setdefault("BUSY", RedisBusy)

#: Errors that mean "Redis cannot serve us right now": callers log once, back off and
#: retry, or answer 503 (507 for OOM), instead of failing the task or exiting. Besides
#: lost connections and timeouts (which include Sentinel's MasterNotFoundError, LOADING
#: and pool exhaustion), that is a cluster that is down or resharding (CLUSTERDOWN,
#: MASTERDOWN, TRYAGAIN, no node reachable), a primary demoted by a failover that still
#: gets our writes (READONLY), a Redis at its maxmemory under noeviction (OOM: the scripts
#: that drain the queue still run, see docs/memory.md; other writes wait for room), a
#: script running too long (BUSY), and a script cache flushed between redis-py's load and
#: its call in a pipeline (NOSCRIPT: the next try loads it again).
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
               ClusterError, TryAgainError, RedisClusterException, ReadOnlyError,
               OutOfMemoryError, RedisBusy, NoScriptError)


def describe_outage(exc: BaseException) -> str:
    """What an UNAVAILABLE error means for an operator, and what to do, in one phrase."""
    if isinstance(exc, OutOfMemoryError):
        return ("Redis is out of memory (maxmemory reached, noeviction): raise maxmemory or let the "
                f"workers drain the queue ({exc})")
    if isinstance(exc, ReadOnlyError):
        return f"Redis is a read-only replica (a failover in progress?): {exc}"
    if isinstance(exc, RedisBusy):
        return f"Redis is busy running a script: {exc}"
    return f"Redis unreachable: {exc}"

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
CONNECT_TIMEOUT_S = 2.0


def connect(url: str, *, max_connections: int = 16, socket_timeout: float | None = 10.0,
            wait_on_cluster: bool = False) -> Redis:
    """An asyncio client for ``url`` whose pool holds at most ``max_connections`` connections.

    The cluster client is handed out typed as ``Redis``: reliq only sends it commands
    and scripts whose keys share one queue's hash slot, which it routes like a single
    server (see docs/scaling.md). Past a node's ``max_connections`` its calls fail at
    once; with ``wait_on_cluster`` (a worker's small pool) they wait instead, at most
    ``max_connections`` of them under way at a time, as on a single server's blocking pool.
    """
    client = _connect(url, _ASYNC, max_connections, socket_timeout)
    if isinstance(client, RedisCluster):
        closed_transport_is_connection_error(client)
    if wait_on_cluster and isinstance(client, RedisCluster):
        client.execute_command = _gated(client.execute_command, asyncio.Semaphore(max_connections))  # type: ignore[method-assign,assignment]
    return cast(Redis, client)


def _gated(call: Callable[..., Awaitable[Any]], gate: asyncio.Semaphore) -> Callable[..., Awaitable[Any]]:
    async def gated(*args: Any, **kwargs: Any) -> Any:
        async with gate:
            return await call(*args, **kwargs)
    return gated


def connect_sync(url: str, *, max_connections: int = 16, socket_timeout: float | None = 10.0) -> redis.Redis:
    """The blocking twin of :func:`connect`: redis-py's thread-safe sync client, same options."""
    return cast(redis.Redis, _connect(url, _SYNC, max_connections, socket_timeout))


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


async def sharded_pubsub(client: Redis) -> bool:
    """Whether the server has sharded pub/sub (SSUBSCRIBE, SPUBLISH: Redis 7.0 on)."""
    info = await client.info("server")
    return int(str(info.get("redis_version", "0")).partition(".")[0]) >= 7


async def pubsubs(client: Redis, channels: Sequence[str]) -> list[tuple[PubSub, list[str]]]:
    """Pub/sub connections for ``channels``, each with the channels it is for.

    One server (or Sentinel's primary): one, from the client's pool. A cluster: one a
    primary serving any of the channels' slots (for SSUBSCRIBE), each a connection of its
    own, not from the cluster client's pools; a channel no key's tag routes (the cancel
    channels, PUBLISHed cluster-wide) can go on any of them.
    """
    if not isinstance(client, RedisCluster):
        return [(client.pubsub(), list(channels))]
    await client.initialize()
    by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
    for channel in channels:
        node = client.get_node_from_key(channel)
        by_node.setdefault(node.name, (node, []))[1].append(channel)
    if not by_node:
        node = client.get_default_node()
        by_node[node.name] = (node, [])
    return [(Redis(connection_pool=ConnectionPool(connection_class=node.connection_class, max_connections=1,
                                                  **node.connection_kwargs)).pubsub(), names)
            for node, names in by_node.values()]


def shard_of(client: redis.Redis, key: str) -> str:
    """The name (``host:port``) of the primary serving ``key`` on a blocking cluster client, from
    its slot map (no round trip); "" for one server. Raises when no primary serves the slot."""
    if isinstance(client, redis.cluster.RedisCluster):
        return str(client.get_node_from_key(key).name)
    return ""


def is_single_server(url: str) -> bool:
    """Whether ``url`` names one server directly (not a cluster, not through Sentinel)."""
    scheme = url.partition("://")[0].lower()
    return scheme not in CLUSTER_SCHEMES and scheme not in SENTINEL_SCHEMES


def _connect(url: str, kind: _Kind, max_connections: int, socket_timeout: float | None) -> Any:
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return _cluster(parse_multi_host(url, DEFAULT_PORT), kind, CLUSTER_SCHEMES[scheme],
                        max_connections, socket_timeout)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(parse_multi_host(url, DEFAULT_SENTINEL_PORT), kind, SENTINEL_SCHEMES[scheme],
                         max_connections, socket_timeout)
    pool = kind.pool.from_url(url, **pool_options(max_connections, socket_timeout))
    return kind.redis.from_pool(pool)  # the client owns the pool: closing it disconnects the pool


def pool_options(max_connections: int, socket_timeout: float | None) -> dict[str, Any]:
    """The options of a single server's blocking pool, for either API of redis-py."""
    return {"max_connections": max_connections, "timeout": socket_timeout,
            "socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": socket_timeout,
            "health_check_interval": 0}


@dataclass(frozen=True, slots=True)
class MultiHostURL:
    """A cluster or Sentinel URL taken apart."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    #: Sentinel only: the monitored service's name (the first path segment), the
    #: database number (the second) and the Sentinels' own password.
    service: str
    db: int
    sentinel_password: str | None


def parse_multi_host(url: str, default_port: int) -> MultiHostURL:
    """Split ``scheme://[user:pass@]h:p,h:p[/service[/db]][?sentinel_password=...]``."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = tuple(_host_port(h, default_port, url) for h in hostlist.split(",") if h)
    if not hosts:
        raise ConfigError(f"Redis URL {url!r} names no host")
    path = [unquote(p) for p in parts.path.split("/") if p]
    db = path[1] if len(path) > 1 else "0"
    if not db.isdigit():
        raise ConfigError(f"Redis URL {url!r}: database {db!r} is not a number")
    query = parse_qs(parts.query)
    return MultiHostURL(hosts=hosts, username=unquote(user) or None, password=unquote(password) or None,
                        service=path[0] if path else "", db=int(db),
                        sentinel_password=query.get("sentinel_password", [None])[0])


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"Redis URL {url!r}: {text!r} is not host:port")
    return host, int(port)


def _cluster(u: MultiHostURL, kind: _Kind, tls: bool, max_connections: int, socket_timeout: float | None) -> Any:
    if u.service not in ("", "0"):  # the path of a cluster URL can only name database 0
        raise ConfigError("Redis Cluster has only database 0")
    return kind.cluster(
        startup_nodes=[kind.node(h, p) for h, p in u.hosts],
        username=u.username,
        password=u.password,
        ssl=tls,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        # No retry of a command whose connection broke or timed out: redis-py's default
        # runs it again, and a script whose reply was lost would run twice (enqueue.lua:
        # the same ids pushed twice). The error reaches reliq's outage rules, as on one
        # server; MOVED/ASK are still followed, and the next command reloads the slot map.
        retry=kind.retry(NoBackoff(), 0),
    )


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of raising."""


class SyncBlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The blocking twin of :class:`BlockingSentinelPool`."""


class SentinelRedis(Redis):
    """The primary's client; closing it also closes the connections to the Sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the pool of the primary, then the Sentinel clients."""
        await super().aclose(close_connection_pool)
        for client in self.sentinel_manager.sentinels if self.sentinel_manager else ():
            await client.aclose()


class SyncSentinelRedis(redis.Redis):
    """The blocking twin of :class:`SentinelRedis`."""

    sentinel_manager: redis.sentinel.Sentinel | None = None

    def close(self) -> None:
        """Close the pool of the primary, then the Sentinel clients."""
        super().close()
        for client in self.sentinel_manager.sentinels if self.sentinel_manager else ():
            client.close()


@dataclass(frozen=True, slots=True)
class _Kind:
    """The classes of one of redis-py's two APIs: the same options build either client."""

    redis: Any
    pool: Any
    cluster: Any
    node: Any
    sentinel: Any
    sentinel_redis: Any
    sentinel_pool: Any
    retry: Any


_ASYNC = _Kind(Redis, BlockingConnectionPool, RedisCluster, ClusterNode, Sentinel, SentinelRedis,
               BlockingSentinelPool, Retry)
_SYNC = _Kind(redis.Redis, redis.BlockingConnectionPool, redis.cluster.RedisCluster, redis.cluster.ClusterNode,
              redis.sentinel.Sentinel, SyncSentinelRedis, SyncBlockingSentinelPool, redis.retry.Retry)


def _sentinel(u: MultiHostURL, kind: _Kind, tls: bool, max_connections: int, socket_timeout: float | None) -> Any:
    if not u.service:
        raise ConfigError("a redis+sentinel:// URL needs the service name as its path: "
                          "redis+sentinel://host:26379,host:26379/mymaster")
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": CONNECT_TIMEOUT_S,
                                       "socket_connect_timeout": CONNECT_TIMEOUT_S}
    if u.sentinel_password:
        sentinel_kwargs["password"] = u.sentinel_password
    sentinel = kind.sentinel(list(u.hosts), sentinel_kwargs=sentinel_kwargs)
    # A few quick retries ride out the seconds of a failover (connecting asks the
    # Sentinels for the new primary each time); longer outages reach the callers, which
    # back off on UNAVAILABLE.
    retry = kind.retry(ExponentialWithJitterBackoff(base=0.1, cap=1.0), retries=3)
    client = sentinel.master_for(
        u.service,
        redis_class=kind.sentinel_redis,
        connection_pool_class=kind.sentinel_pool,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        username=u.username,
        password=u.password,
        db=u.db,
        ssl=tls,
        retry=retry,
    )
    client.sentinel_manager = sentinel
    return client
