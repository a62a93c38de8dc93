"""Redis memory: how full it is, and refusing new tasks before it is full.

Under ``noeviction`` (what reliq asks for) a Redis at its ``maxmemory`` refuses writes.
Producers are refused first, ahead of the wall (``max_memory_ratio`` of ``maxmemory``),
so the workers, whose scripts run even at the wall (``allow-oom``), keep headroom to
drain the queue. The producer side learns how full Redis is from ``INFO memory``, read
at most once every ``SAMPLE_S`` per client however many requests arrive (a check
between samples costs a clock read); between readings it adds what it has let in since,
so a fast producer cannot run past the limit between two readings. The queue counts each
refusal (``refused_memory``) with a script that runs at the wall too: one call a refused
batch, as an enqueue is.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any, TypedDict

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from reliq.errors import RedisFull

log = logging.getLogger(__name__)

#: How old a reading may be before the next admission check reads INFO again, seconds.
SAMPLE_S = 0.5
#: What one task adds to Redis beyond its payload, bytes, by a cautious estimate: MEMORY
#: USAGE of a pending record is ~360 bytes with a null payload, but ~1,250 with a payload
#: of 200 bytes: a hash with a value over 64 bytes (hash-max-listpack-value) leaves the
#: compact listpack encoding for a hash table, which costs ~60 bytes more a field.
TASK_BYTES = 1200
#: The stats-hash counter of tasks refused because Redis was (nearly) full.
REFUSED_MEMORY = "refused_memory"


class MemoryView(TypedDict):
    """Redis memory as /stats shows it."""

    used_bytes: int
    max_bytes: int
    ratio: float | None


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """``used_memory`` and ``maxmemory`` (0 = no limit) of the Redis server."""

    used: int
    max: int

    @property
    def ratio(self) -> float | None:
        """used / max, None without a limit."""
        return self.used / self.max if self.max else None

    def view(self) -> MemoryView:
        """The reading for /stats."""
        ratio = self.ratio
        return MemoryView(used_bytes=self.used, max_bytes=self.max,
                          ratio=None if ratio is None else round(ratio, 4))


async def read(redis: Redis) -> MemoryReading:
    """Read INFO memory (on a cluster, the fullest node's)."""
    return max((await read_nodes(redis)).values(), key=lambda r: r.ratio or 0.0)


async def read_nodes(redis: Redis) -> dict[str, MemoryReading]:
    """INFO memory of each node by name ("host:port"; ``""`` for the one server of a plain client)."""
    if isinstance(redis, RedisCluster):  # INFO alone would ask one node: every primary, answering by name
        info: dict[str, Any] = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
    else:
        info = await redis.info("memory")
    nodes = {k: v for k, v in info.items() if isinstance(v, dict)} or {"": info}
    return {name: MemoryReading(int(n.get("used_memory", 0)), int(n.get("maxmemory", 0)))
            for name, n in nodes.items()}


class MemoryGuard:
    """Admission by memory for the producers of one Redis client (see the module docstring).

    On a cluster each node is judged on its own reading: a partition whose primary is full
    is refused, the partitions on the other primaries are not (and are not counted as
    refused).
    """

    def __init__(self, redis: Redis, ratio: float) -> None:
        self.redis = redis
        self.ratio = ratio
        self.readings: dict[str, MemoryReading] = {}
        self._at = -SAMPLE_S  # monotonic time of the last reading
        self._sampling: asyncio.Task[None] | None = None
        self._broken = False
        self._added: dict[str, int] = {}  # bytes let in since the reading, by estimate, by node

    async def admit(self, queue: str, nbytes: int, key: str | None = None) -> None:
        """Let ``nbytes`` more in, or raise RedisFull when Redis would be past the ratio of its maxmemory.

        ``key``: a key of ``queue``, whose node is the one judged on a cluster.
        """
        if time.monotonic() - self._at >= SAMPLE_S and not self._broken:
            if self._sampling is None or self._sampling.done():
                self._sampling = asyncio.create_task(self._sample())
            await asyncio.shield(self._sampling)  # concurrent callers share one INFO
        node = self._node_of(key)
        r = self.readings.get(node)
        added = self._added.get(node, 0)
        if r is not None and r.max and self.ratio < 1.0:
            used = r.used + added
            if used >= r.max * self.ratio:
                raise RedisFull(queue, used, r.max, self.ratio)
        self._added[node] = added + nbytes

    def _node_of(self, key: str | None) -> str:
        """The name of the reading that judges ``key``: its node's; the fullest node's without a key."""
        if "" in self.readings or not self.readings or not isinstance(self.redis, RedisCluster):
            return ""
        if key is None:
            return max(self.readings, key=lambda n: self.readings[n].ratio or 0.0)
        return str(self.redis.get_node_from_key(key).name)

    async def _sample(self) -> None:
        self._at = time.monotonic()
        try:
            self.readings = await read_nodes(self.redis)
            self._added = {}
        except ResponseError as exc:  # INFO disabled (some managed services): Redis's own OOM still answers 507
            log.warning("cannot read Redis INFO memory (%s): tasks are refused only once Redis itself is full",
                        exc)
            self._broken = True


_guards: weakref.WeakKeyDictionary[Redis, MemoryGuard] = weakref.WeakKeyDictionary()


def guard(redis: Redis, ratio: float) -> MemoryGuard:
    """The guard of ``redis`` (one a client, so all its queues share one reading)."""
    g = _guards.get(redis)
    if g is None or g.ratio != ratio:
        g = _guards[redis] = MemoryGuard(redis, ratio)
    return g
