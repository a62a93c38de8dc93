"""Partitioned queues: one queue as N sub-queues, each under a hash tag of its own.

A queue's keys share one hash tag, so one queue lives on one Redis Cluster shard, one
core. With ``--partitions N`` the queue becomes N partitions, each a queue of its own as
far as the scripts go (the same keys under another tag), placed on different primaries
where the cluster has them. What makes them one queue lives here:

- **The partition map** (``keys.partitions`` of the queue, JSON): N and each partition's
  tag. Partition 0 is the queue's own tag ``{Q}``, so a queue of one partition (the
  default, no map) keeps today's keys, and growing it later moves nothing. Partition
  ``i > 0`` is ``{Q:i}``, or ``{Q:i.k}`` when that lands on a primary already holding
  more partitions than another (:func:`choose_tags`); the map records the tag chosen.
- **Task ids say where a task lives**: an id of partition ``i > 0`` ends in ``.i`` (the
  ULID first, so ids still sort by creation time); partition 0's ids are plain ULIDs,
  as a queue of one partition's always were (:func:`index_of`).
- **Routing** (:class:`Router`): a task with a ``key`` goes to the partition its type and
  key hash to (so the key's order and concurrency hold), else one with a unique key (or
  a unique payload), else one with an idempotency key, likewise; others go round-robin.
  A batch goes whole to one partition (all or nothing is one script on one slot):
  a batch whose keys hash to different partitions is refused.
- **Agreement** (:func:`resolve`): a role started with ``--partitions N`` creates the map
  when there is none, and refuses to start (exit 2) when it records another N; without
  the flag it reads the recorded N. Changing N is :func:`grow` (``reliq partitions set``):
  only up, and only while the queue is quiet (docs/partitions.md says why).
"""

from __future__ import annotations

import itertools
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from reliq.errors import ConfigError, InvalidTask
from reliq.settings import MAX_PARTITIONS

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from reliq.queue import Queue, Snapshot, TaskSpec

#: What separates a task id from the partition it names (not a Crockford base32 letter).
SEP = "."
#: How long a producer trusts the map it read before reading it again, seconds: a
#: ``reliq partitions set`` reaches running producers within this.
REFRESH_S = 5.0
#: Tags tried for one partition when looking for a primary that holds fewer partitions.
PLACEMENT_TRIES = 2000


@dataclass(frozen=True, slots=True)
class PartitionMap:
    """The partitions of one queue: ``tags[i]`` is partition i's hash tag (``tags[0]`` the queue's own)."""

    queue: str
    tags: tuple[str, ...]
    #: 0 for a queue with no map (one partition); 1 once created, +1 each change.
    version: int = 0

    @property
    def n(self) -> int:
        """How many partitions."""
        return len(self.tags)

    def encode(self) -> bytes:
        """The map as stored in Redis."""
        return orjson.dumps({"n": self.n, "tags": list(self.tags), "version": self.version})

    @classmethod
    def decode(cls, queue: str, raw: bytes | str | None) -> PartitionMap:
        """The map stored for ``queue`` (``raw`` None or empty: one partition, no map)."""
        if not raw:
            return single(queue)
        data = orjson.loads(raw)
        return cls(queue, tuple(data["tags"]), int(data["version"]))


def single(queue: str) -> PartitionMap:
    """The map of a queue of one partition: its own tag, nothing stored."""
    return PartitionMap(queue, (queue,), 0)


def check_count(n: Any) -> int:
    """``n`` if it can be a number of partitions; ConfigError otherwise."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, not {n!r}")
    return n


# -- task ids ------------------------------------------------------------------------


def with_partition(task_id: str, index: int) -> str:
    """The id of a task of partition ``index``: partition 0's ids are left as they are."""
    return task_id if index == 0 else f"{task_id}{SEP}{index}"


def index_of(task_id: str, n: int) -> int:
    """The partition an id names (0 for a plain id, and for one naming no partition of n)."""
    _, sep, tail = task_id.rpartition(SEP)
    if not sep or not tail.isdigit() or tail.startswith("0"):
        return 0
    index = int(tail)
    return index if index < n else 0


# -- routing -------------------------------------------------------------------------


def route_key(spec: TaskSpec, unique_types: frozenset[str] = frozenset()) -> str:
    """What decides a task's partition ("" = nothing: round-robin).

    Its key first (a key's tasks must share the claim script that orders them and counts
    their slots), then its unique key (or payload, for a task unique by its payload, also
    by its type's default), then its idempotency key: each guarantee is kept within one
    partition, so the tasks that share one must land in the same partition.
    """
    if spec.key:
        return f"k{spec.type}\0{spec.key}"
    if spec.unique_key:
        return f"u{spec.type}\0{spec.unique_key}"
    if spec.unique or (spec.unique is None and spec.type in unique_types):
        return f"p{spec.type}\0{spec.payload.decode()}"
    if spec.idempotency_key:
        return "i" + spec.idempotency_key
    return ""


def unique_types(types: dict[Any, Any]) -> frozenset[str]:
    """The types unique by default, from a queue's types hash (reliq/type_defaults.py: JSON a type)."""
    out = set()
    for name, raw in types.items():
        try:
            if orjson.loads(raw).get("unique"):
                out.add(name.decode() if isinstance(name, bytes) else str(name))
        except (orjson.JSONDecodeError, AttributeError):
            continue  # a malformed entry is the enqueue script's to judge; here it only routes
    return frozenset(out)


def hashed(key: str, n: int) -> int:
    """The partition of a routing key: CRC-32 of its UTF-8, modulo n (the same in every process)."""
    return zlib.crc32(key.encode()) % n


class Router:
    """Chooses the partition of each enqueue; round-robin over the unkeyed ones."""

    def __init__(self) -> None:
        # each producer starts somewhere else, so that many of them do not all start at 0
        self._turns = itertools.count(int.from_bytes(os.urandom(2), "big"))
        #: Types whose tasks are unique by default (reliq/type_defaults.py): routed by payload.
        self.unique_types: frozenset[str] = frozenset()

    def place(self, specs: Sequence[TaskSpec], pmap: PartitionMap) -> tuple[int, list[TaskSpec]]:
        """The one partition a batch goes to, and its specs with ids naming it.

        InvalidTask (nothing written) when the batch's keys hash to different partitions.
        """
        n = pmap.n
        chosen: dict[int, str] = {}
        for spec in specs:
            key = route_key(spec, self.unique_types)
            if key:
                chosen.setdefault(hashed(key, n), key[1:].replace("\0", " "))
        if len(chosen) > 1:
            (a, ka), (b, kb) = list(chosen.items())[:2]
            raise InvalidTask(
                f"a batch goes whole to one partition of queue {pmap.queue!r} (all or nothing), and its tasks' "
                f"keys map to partitions {a} ({ka!r}) and {b} ({kb!r}): send tasks of different keys in "
                "separate batches")
        index = next(iter(chosen)) if chosen else next(self._turns) % n
        if index == 0:
            return 0, list(specs)
        return index, [replace(spec, id=with_partition(spec.id, index)) for spec in specs]


class Named(Protocol):
    """What a layout needs of a queue: its name."""

    name: str


P = TypeVar("P", bound=Named)


class Layout(Generic[P]):
    """A queue's partitions as last read (``[own]`` for one partition), and its router.

    Shared by :class:`reliq.queue.Queue` and :class:`reliq.syncqueue.SyncQueue`, which read
    the map (when :attr:`stale`) and :meth:`adopt` it; ``make(tag, index)`` builds a partition.
    """

    def __init__(self, own: P, make: Callable[[str, int], P], fixed: bool) -> None:
        self.own = own
        self._make = make
        self.pmap = single(own.name)
        self.parts: list[P] = [own]
        #: When the map is next read (monotonic); never for a partition itself.
        self._until = math.inf if fixed else 0.0
        self.router = Router()

    @property
    def stale(self) -> bool:
        """Whether the map should be read again before use."""
        return time.monotonic() >= self._until

    def adopt(self, pmap: PartitionMap) -> None:
        """Use ``pmap`` until it is next read (REFRESH_S later); partitions kept by tag."""
        self._until = time.monotonic() + REFRESH_S
        if pmap.tags == self.pmap.tags:
            return
        self.pmap = pmap
        known = {p.name: p for p in self.parts if p is not self.own}
        self.parts = [self.own] if pmap.n == 1 else [known.get(t) or self._make(t, i) for i, t in enumerate(pmap.tags)]

    def place(self, specs: Sequence[TaskSpec]) -> tuple[P, Sequence[TaskSpec]]:
        """The partition a batch goes to, and its specs with ids naming it (InvalidTask: keys of two)."""
        if len(self.parts) == 1:
            return self.parts[0], specs
        index, placed = self.router.place(specs, self.pmap)
        return self.parts[index], placed

    def locate(self, task_id: str) -> P:
        """The partition holding ``task_id``, from the id alone."""
        return self.parts[0] if len(self.parts) == 1 else self.parts[index_of(task_id, len(self.parts))]


# -- placement on a cluster ------------------------------------------------------------


def candidates(queue: str, index: int) -> Any:
    """The tags partition ``index`` may take, in order of preference: ``Q:i``, then ``Q:i.1``, ..."""
    yield f"{queue}:{index}"
    for k in range(1, PLACEMENT_TRIES):
        yield f"{queue}:{index}.{k}"


def choose_tags(queue: str, n: int, existing: Sequence[str], node_of: Callable[[str], str],
                primaries: Sequence[str]) -> tuple[str, ...]:
    """Tags for partitions ``len(existing)`` to n-1, each on a primary holding the fewest partitions.

    ``existing`` are the tags already in use (partition 0's is the queue's own);
    ``node_of`` names the primary serving a tag's slot. On a single server every
    primary is the one, and the tags are the plain ``Q:i``.
    """
    used = Counter({p: 0 for p in primaries})
    for tag in existing:
        used[node_of(tag)] += 1
    tags = list(existing)
    for index in range(len(existing), n):
        fewest = min(used.values()) if used else 0
        best = ""
        for tag in candidates(queue, index):
            if not best or used[node_of(tag)] < used[node_of(best)]:
                best = tag
            if used[node_of(best)] <= fewest:
                break
        used[node_of(best)] += 1
        tags.append(best)
    return tuple(tags)


async def topology(redis: Redis) -> tuple[Callable[[str], str], list[str]]:
    """How to name the primary of a tag's slot, and the primaries (one, "", off a cluster)."""
    if not isinstance(redis, RedisCluster):
        return (lambda tag: ""), [""]
    cluster: RedisCluster = redis
    await cluster.initialize()
    nodes = cluster.nodes_manager

    def node_of(tag: str) -> str:
        return str(nodes.get_node_from_slot(key_slot(tag.encode())).name)

    return node_of, [str(node.name) for node in cluster.get_primaries()]


async def placement(redis: Redis, pmap: PartitionMap) -> list[str]:
    """The primary (host:port) each partition's slot is served by now ("" off a cluster)."""
    node_of, _ = await topology(redis)
    return [node_of(tag) for tag in pmap.tags]


# -- agreeing on the map -----------------------------------------------------------------


async def read(queue: Queue) -> PartitionMap:
    """The recorded map of ``queue`` (one partition when none is recorded)."""
    return PartitionMap.decode(queue.name, await queue.partition_map())


async def _write(queue: Queue, expected: PartitionMap, new: PartitionMap) -> PartitionMap:
    """Write ``new`` over ``expected``; the map found instead when another writer came first."""
    written, current = await queue.write_partition_map(expected.encode() if expected.version else b"", new.encode())
    return new if written else PartitionMap.decode(queue.name, current)


def _mismatch(pmap: PartitionMap, wanted: int) -> ConfigError:
    return ConfigError(
        f"queue {pmap.queue!r} has {pmap.n} partition(s) recorded in Redis, not the {wanted} asked for with "
        f"--partitions: start it with --partitions {pmap.n}, or without the flag (it then reads the recorded "
        f"number); to change it, stop its workers and run `reliq partitions set {pmap.queue} {wanted}` "
        "(docs/partitions.md)")


async def resolve(queue: Queue, wanted: int = 0) -> PartitionMap:
    """The partition map a role serving ``queue`` uses, made to agree with ``wanted`` (0 = not given).

    No map and ``wanted`` > 1: the map is created (the queue must be quiet, as for a
    change). A map with another N than ``wanted``: ConfigError. The queue adopts it.
    """
    pmap = await read(queue)
    if wanted and pmap.n != wanted:
        if pmap.version:
            raise _mismatch(pmap, wanted)
        pmap = await _grow(queue, pmap, check_count(wanted))
        if pmap.n != wanted:  # another role created it first, with another N
            raise _mismatch(pmap, wanted)
    await queue.adopt_read(pmap)
    return pmap


async def grow(queue: Queue, n: int) -> tuple[PartitionMap, PartitionMap]:
    """``reliq partitions set Q N``: (the map before, the map after); ConfigError when refused."""
    before = await read(queue)
    check_count(n)
    if n == before.n:
        return before, before
    if n < before.n:
        raise ConfigError(
            f"queue {queue.name!r} has {before.n} partitions; the count only grows: a partition taken away "
            "would strand the ids that name it (docs/partitions.md)")
    after = await _grow(queue, before, n)
    await queue.adopt_read(after)  # the new partitions take the queue's record format
    return before, after


async def _grow(queue: Queue, before: PartitionMap, n: int) -> PartitionMap:
    problems = await busy(queue, before)
    if problems:
        raise ConfigError(
            f"queue {queue.name!r} cannot go from {before.n} to {n} partitions while it is busy: "
            + "; ".join(problems) + ". Stop its workers once it has drained (or pause it and let the "
            "running tasks end), then try again (docs/partitions.md)")
    node_of, primaries = await topology(queue.redis)
    tags = choose_tags(queue.name, n, before.tags, node_of, primaries)
    after = await _write(queue, before, PartitionMap(queue.name, tags, before.version + 1))
    return after


async def busy(queue: Queue, pmap: PartitionMap) -> list[str]:
    """What keeps ``queue`` from changing its number of partitions: live workers, live tasks.

    A change moves where keys, unique keys and idempotency keys hash to, so nothing that
    relies on one may be in flight; and a worker started before it would not serve the
    new partitions.
    """
    problems = []
    queue.adopt(pmap)
    for part in queue.parts_now():
        snap = await part.snapshot()
        live = await part.live_workers()
        where = f"partition {part.partition or 0} ({{{part.name}}})"
        if live:
            problems.append(f"{where} has {live} live worker(s)")
        held = snap["pending"] + snap["delayed"] + snap["processing"]
        if held:
            problems.append(f"{where} holds {snap['pending']} pending, {snap['delayed']} scheduled or retrying and "
                            f"{snap['processing']} running task(s)")
    return problems


# -- reading the partitions as one queue ------------------------------------------------


#: Snapshot fields merged by taking the largest partition's value (ages, and workers: a
#: worker serving the queue is registered in every partition).
_MAX_FIELDS = ("lag_s", "dead_oldest_age_s", "workers")
#: What the per-partition breakdown of /stats shows of each partition.
PARTITION_FIELDS = ("pending", "processing", "delayed", "dead_letter", "workers", "lag_s", "enqueued", "succeeded",
                    "dead")


def merge(name: str, pmap: PartitionMap, snaps: Sequence[Snapshot], nodes: Sequence[str]) -> Snapshot:
    """The snapshots of a queue's partitions as one (sums; ages and workers the largest), with
    ``partitions``: each partition's index, tag, primary and main depths."""
    each: list[dict[str, Any]] = [dict(s) for s in snaps]
    merged: dict[str, Any] = {"queue": name}
    for key, value in each[0].items():
        if key == "queue":
            continue
        if key in _MAX_FIELDS:
            merged[key] = max(s[key] for s in each)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = sum(s[key] for s in each)
        elif key == "pending_by_priority":
            merged[key] = {p: sum(s[key][p] for s in each) for p in value}
        else:  # paused: written to every partition at once; partition 0's is the queue's
            merged[key] = value
    merged["partitions"] = rows(pmap, nodes, snaps)
    return cast("Snapshot", merged)


def rows(pmap: PartitionMap, nodes: Sequence[str], snaps: Sequence[Snapshot]) -> list[dict[str, Any]]:
    """Each partition's index, tag, primary ("" off a cluster) and main depths."""
    return [{"partition": i, "tag": tag, "node": node, **{f: dict(s)[f] for f in PARTITION_FIELDS}}
            for i, (tag, node, s) in enumerate(zip(pmap.tags, nodes, snaps, strict=True))]


def expand(weighted: Sequence[tuple[Queue, int]]) -> list[tuple[Queue, int]]:
    """The partitions a worker serves for ``weighted`` queues (every partition of each, as last
    read), each with its weight in the fetcher: the partitions of a queue together weigh what
    the queue was given (queue weight * lcm(counts) / its count)."""
    groups = [queue.parts_now() for queue, _ in weighted]
    lcm = math.lcm(*(len(g) for g in groups))
    return [(part, weight * lcm // len(group)) for group, (_, weight) in zip(groups, weighted, strict=True)
            for part in group]
