"""What every part of :class:`reliq.queue.Queue` stands on: its attributes, and the partition routing.

``Queue`` is split by responsibility: this base, :mod:`reliq.queue_reads` (inspection),
:mod:`reliq.queue_admin` (operators' actions) and :mod:`reliq.queue` itself (the task
lifecycle, and the construction). Each part is a class ``Queue`` inherits from; none is
used alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from redis.asyncio import Redis

from reliq import calls, partitions
from reliq.formats import RecordFormat
from reliq.keys import QueueKeys
from reliq.partitions import PartitionMap
from reliq.scripts import Scripts
from reliq.settings import Settings

if TYPE_CHECKING:
    from reliq.queue import Queue, TaskSpec


class QueueBase:
    """The attributes :class:`reliq.queue.Queue` sets up, and how it finds its partitions (its docstring says how)."""

    # Set by Queue.__init__ (which says what each is); typed here for the parts that use them.
    redis: Redis
    settings: Settings
    name: str
    keys: QueueKeys
    partition: int | None
    of: str
    share: int
    _reading: asyncio.Future[None] | None
    _scripts: Scripts
    layout: partitions.Layout[Queue]
    #: The record format its producers write, as this process last read it (None: not yet).
    record_format: RecordFormat | None

    # -- partitions (reliq/partitions.py) ----------------------------------------------------

    def adopt(self, pmap: PartitionMap) -> None:
        """Use ``pmap`` as this queue's partition map (until it is read again, REFRESH_S later)."""
        self.layout.adopt(pmap)
        for part in self.layout.parts:
            part.share = pmap.n

    @property
    def pmap(self) -> PartitionMap:
        """The partition map as last read."""
        return self.layout.pmap

    def parts_now(self) -> list[Queue]:
        """The partitions as last read: ``[self]`` for a queue of one partition (or a partition)."""
        return self.layout.parts

    async def parts(self) -> list[Queue]:
        """The partitions, the map read again when older than REFRESH_S (one GET)."""
        if self.layout.stale:
            # Concurrent callers share one read, and all go on in the same turn of the loop once it
            # is back (a lock would let them through one a turn, and the enqueues they make would
            # no longer share round trips); shielded: a caller cancelled does not cancel the others'.
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read_map())
                self._reading.add_done_callback(_retrieved)
            await asyncio.shield(self._reading)
        return self.layout.parts

    async def adopt_read(self, pmap: PartitionMap) -> None:
        """Adopt ``pmap`` as read from Redis, and read each partition's record format with it.

        The format is decided before this process writes anything (records.lua: a role's
        first contact), and read again with each map read, so that an upgrade reaches the
        producers within REFRESH_S.
        """
        self.adopt(pmap)
        first, *others = self.layout.parts
        new_as = await first.decide_records()  # a partition created later takes the queue's format
        await asyncio.gather(*(part.decide_records(new_as=new_as) for part in others))

    async def _read_map(self) -> None:
        try:
            await self.adopt_read(PartitionMap.decode(self.name, await self.partition_map()))
            if self.layout.pmap.n > 1:  # tasks unique by their type's default route by payload
                self.layout.router.unique_types = partitions.unique_types(await self.redis.hgetall(self.keys.types))
        finally:
            self._reading = None

    async def place(self, specs: Sequence[TaskSpec]) -> tuple[Queue, Sequence[TaskSpec]]:
        """The partition a batch goes to, and its specs with ids naming it (InvalidTask: keys of two)."""
        await self.parts()
        return self.layout.place(specs)

    async def locate(self, task_id: str) -> Queue:
        """The partition holding ``task_id``, from the id alone (itself for one partition)."""
        await self.parts()
        return self.layout.locate(task_id)

    async def _spread(self) -> list[Queue] | None:
        """The partitions when this queue has more than one (a method then asks each), else None."""
        parts = await self.parts()
        return parts if parts[0] is not self else None

    async def _by_partition(self, ids: Sequence[str]) -> dict[Queue, list[str]]:
        """``ids`` grouped by the partition each names, in their order."""
        await self.parts()
        groups: dict[Queue, list[str]] = {}
        for task_id in ids:
            groups.setdefault(self.layout.locate(task_id), []).append(task_id)
        return groups

    async def decide_records(self, new_as: RecordFormat | None = None) -> RecordFormat:
        """The record format this queue's producers write, decided now if it was not (``new_as`` if the
        queue is new, else 2)."""
        fmt, *_ = await self._scripts("records", *calls.records_call(self.keys, None, new_as))
        self.record_format = RecordFormat(int(fmt))
        return self.record_format

    async def upgrade_records(self, to: RecordFormat) -> list[str]:
        """Set the record format its producers write to ``to``; [] when done, else (nothing written) the
        registered workers that do not read it."""
        fmt, *older = await self._scripts("records", *calls.records_call(self.keys, to))
        self.record_format = RecordFormat(int(fmt))
        return [calls.text(w) for w in older]

    async def partition_map(self) -> bytes | None:
        """The partition map as stored (None: none, one partition)."""
        return cast(bytes | None, await self.redis.get(self.keys.partitions))

    async def write_partition_map(self, expected: bytes, new: bytes) -> tuple[bool, bytes]:
        """Write the map ``new`` only over ``expected`` (b"" = none); (written, the map now)."""
        written, current = await self._scripts("partition_map", [self.keys.partitions], [expected, new])
        return int(written) == 1, current


def _retrieved(future: asyncio.Future[None]) -> None:
    """Retrieve a shared read's error, so that a read whose callers were all cancelled logs nothing."""
    if not future.cancelled():
        future.exception()
