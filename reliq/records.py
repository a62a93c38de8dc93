"""A queue's record format, and the upgrade to format 2 (docs/architecture.md: "Record formats across an upgrade").

Each partition's producers write the format ``keys.format`` names (records.lua decides it
once: 2 for a new queue, 1 for one in use already). Workers of this version read both, and
say so in their info hash (:data:`SPEAKS`); workers of a version before format 2 read
format 1 alone, so ``reliq records upgrade`` turns a queue to format 2 only while none of
its registered workers is of such a version.
"""

from __future__ import annotations

from dataclasses import dataclass

from reliq.calls import SPEAKS
from reliq.errors import ConfigError
from reliq.formats import RecordFormat
from reliq.queue import Queue


@dataclass(frozen=True, slots=True)
class PartitionFormat:
    """One partition's record format, and the registered workers that read format 1 alone."""

    partition: int
    format: RecordFormat
    older: tuple[str, ...]


async def formats(queue: Queue) -> list[PartitionFormat]:
    """Each partition's record format (decided now where it was not) and its workers of an older version."""
    out = []
    for i, part in enumerate(await queue.parts()):
        fmt = await part.decide_records()
        _, workers = await part.workers_info()
        older = tuple(w for w, _, info in workers if int(info.get(SPEAKS) or RecordFormat.FIELDS) < RecordFormat.BODY)
        out.append(PartitionFormat(i, fmt, older))
    return out


async def upgrade(queue: Queue) -> list[PartitionFormat]:
    """Turn every partition of ``queue`` to format 2 (the formats before); ConfigError, writing nothing, while a
    registered worker reads format 1 alone.

    Every partition is checked first; then each is set by records.lua, which checks its workers
    again in the same call, so a worker registering meanwhile is refused there (the partitions
    set before it stay at 2: run this again once it is gone).
    """
    before = await formats(queue)
    older = sorted({w for p in before for w in p.older})
    for part, p in zip(await queue.parts(), before, strict=True):
        if not older and p.format != RecordFormat.BODY:
            older = await part.upgrade_records(RecordFormat.BODY)
    if older:
        raise ConfigError(
            f"queue {queue.name!r}: {len(older)} registered worker(s) of a version before record format 2 "
            f"({', '.join(older[:5])}{', ...' if len(older) > 5 else ''}) would not read its records: stop them "
            "(or wait for the reaper to drop a dead one, within the lease), then run this again")
    return before
