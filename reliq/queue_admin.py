"""Operating a queue: pausing, limits, type defaults, periodic schedules and dead letters.

Part of :class:`reliq.queue.Queue` (see :mod:`reliq.queue_base`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, cast

import orjson

from reliq import calls, pausing
from reliq.calls import text
from reliq.errors import InvalidTask, script_error
from reliq.formats import Code, Fire, Put, ScheduleSource
from reliq.limits import Layer, LimitView, check_ordered, merged
from reliq.limits import view as limit_view
from reliq.pausing import PauseView
from reliq.queue_reads import QueueReads

if TYPE_CHECKING:
    from reliq.queue import Queue
    from reliq.schedules import Plan, Schedule


#: Payload edits a dead task's record keeps (each with the payload it replaced).
EDITS_KEPT = 10


class ArchivedTask(TypedDict):
    """A dead task evicted into the archive: when, and its whole record as it was."""

    task_id: str
    evicted_at: int
    fields: dict[str, str]


class QueueAdmin(QueueReads):
    """What operators (the API, the CLI, the monitor) and workers at start do to a queue besides running tasks."""

    # -- pausing (reliq/pausing.py) ----------------------------------------------------------

    async def pause(self, task_type: str | None, by: str) -> tuple[bool, int]:
        """Pause the whole queue (``task_type`` None) or one type; return (paused now, since ms).

        False when it was paused already (the first pause's time and author stay). A
        partitioned queue is paused in every partition (partition 0's answer is the queue's).
        """
        parts = await self.parts()
        if parts[0] is not self:
            answers = [await part.pause(task_type, by) for part in parts]
            return answers[0]
        code, since = await self._scripts("pause", [self.keys.paused], [pausing.field(task_type), by])
        return code == Code.OK, int(since)

    async def resume(self, task_type: str | None) -> tuple[bool, int]:
        """Resume the queue or one type; return (whether it was paused, held tasks moved back to pending).

        A type's held tasks go back :data:`pausing.RESUME_CHUNK` a script call; claims take
        the type as usual from the first call on.
        """
        name = pausing.field(task_type)
        parts = await self.parts()
        if parts[0] is not self:
            done = [await part.resume(task_type) for part in parts]
            return any(was for was, _ in done), sum(moved for _, moved in done)
        k = self.keys
        keys = [k.paused, k.pending, k.held(name), k.task_prefix, k.priority_prefix, k.priorities,
                *calls.group_keys(k)]
        was, total, first = False, 0, "1"
        while True:
            code, moved, left = await self._scripts("resume", keys, [name, pausing.RESUME_CHUNK, first])
            was, total, first = was or code != Code.ALREADY, total + int(moved), ""
            if code == Code.PAUSED or int(left) == 0:  # paused again: what is left stays held
                return was, total

    async def paused(self) -> PauseView:
        """What is paused in this queue (read with the snapshot; this reads only that)."""
        return (await self.snapshot())["paused"]

    # -- limits (reliq/limits.py) ------------------------------------------------------------

    async def write_limits(self, which: str, layers: Mapping[str, Layer | None]) -> int:
        """Write layer ``which`` ('declared' or 'set') of the limits of each type (None removes it).

        Returns how many types' merged limits changed. A partitioned queue's are written to
        every partition, each enforcing its share of a rate (limit.lua), so that together
        they never pass it.
        """
        if not layers:
            return 0
        parts = await self.parts()
        if parts[0] is not self:
            changed = [await part.write_limits(which, layers) for part in parts]
            return changed[0]
        keys = [self.keys.limits, self.keys.limit_sources]
        return int(await self._scripts("limit", keys, [which, orjson.dumps(dict(layers)), self.share]))

    async def set_limits(self, task_type: str, layer: Layer) -> LimitView:
        """Set ``layer``'s fields of the type's run-time limits (the rest stay); its view after.

        InvalidTask when the merged limits would be ``ordered`` without a key concurrency of 1.
        """
        task_type = pausing.field(task_type)
        current = (await self.limit_sources()).get(task_type, {})
        new_set = {**current.get("set", {}), **layer}
        check_ordered(merged(current.get("declared", {}), cast(Layer, new_set)))
        await self.write_limits("set", {task_type: layer})
        return (await self.limits([task_type]))[task_type]

    async def limit_sources(self) -> dict[str, dict[str, Layer]]:
        """Each type with limits -> its layers as stored ({"declared": ..., "set": ...})."""
        raw = await self.redis.hgetall(self.keys.limit_sources)
        return {text(k): orjson.loads(v) for k, v in raw.items()}

    async def limits(self, types: Sequence[str] | None = None) -> dict[str, LimitView]:
        """The limits of every type that has some (or of ``types``), with what each holds set aside now."""
        sources = await self.limit_sources()
        names = sorted(sources) if types is None else list(types)
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                pipe.llen(k.limited(name))
                pipe.zscore(k.limited_due, name)
            raw = await pipe.execute()
        sec, usec = raw[0]
        now = sec * 1000 + usec // 1000
        out = {}
        for i, name in enumerate(names):
            held, due = int(raw[1 + 2 * i]), raw[2 + 2 * i]
            due_in = max(0.0, (float(due) - now) / 1000) if due is not None and held else None
            out[name] = limit_view(sources.get(name, {}), held, due_in)
        return out

    # -- type defaults (reliq/type_defaults.py) ----------------------------------------------

    async def set_type_defaults(self, fields: Mapping[str, bytes], cleared: Sequence[str]) -> None:
        """Set types' entries of the types hash (type -> encoded defaults) and take others out.

        See :mod:`reliq.type_defaults`, which encodes them. ``types.lua`` writes them even
        on a full Redis, so that a worker started there gets to drain it.
        """
        args: list[str | bytes] = [x for item in fields.items() for x in item]
        await self._scripts("types", [self.keys.types], [*args, "", *cleared])

    # -- periodic schedules (reliq/schedules.py) ---------------------------------------------

    async def schedule_rows(self, name: str = "") -> list[Any]:
        """``schedules.lua``'s reply: the Redis clock, then each schedule's hash and last task's state."""
        k = self.keys
        return cast(list[Any], await self._scripts("schedules", [k.schedules, k.schedule_prefix, k.task_prefix],
                                                   [name]))

    async def schedule_put(self, schedule: Schedule, source: ScheduleSource) -> Put:
        """Write a definition (``source`` code or api); what schedule_put.lua did with it."""
        k = self.keys
        outcome, _ = await self._scripts("schedule_put", [k.schedules, k.schedule(schedule.name)],
                                         [schedule.name, schedule.to_json(), schedule.version, schedule.when, source])
        return Put(text(outcome))

    async def schedule_remove(self, name: str) -> bool:
        """Remove a schedule; False when there was none."""
        k = self.keys
        return int(await self._scripts("schedule_remove", [k.schedules, k.schedule(name)], [name])) == 1

    async def schedule_pause(self, name: str, pause: bool, by: str) -> bool:
        """Pause or resume a schedule: whether this changed it; ScheduleNotFound when there is no such schedule."""
        code = int(await self._scripts("schedule_pause", [self.keys.schedule(name)],
                                       ["1" if pause else "", by]))
        if code < 0:
            raise script_error(code, name=name)
        return code == Code.OK

    async def schedule_fire(self, name: str, version: str, upto: str, plan: Plan, slots: bytes) -> Fire:
        """Record a decision made from cursor ``upto`` (as read); Fire.OK, or why it was not (schedule_fire.lua)."""
        k = self.keys
        args = [version, upto, plan.upto, plan.skipped, slots, plan.run[-1] if plan.run else ""]
        outcome, _ = await self._scripts("schedule_fire", [k.schedule(name), k.stats], args)
        return Fire(text(outcome))

    async def schedule_enqueued(self, name: str, firing: bytes, task_id: str) -> bool:
        """Note that a decision's tasks (``firing`` as recorded; b'' for a trigger) are in, the newest ``task_id``."""
        return int(await self._scripts("schedule_enqueued", [self.keys.schedule(name)], [firing, task_id])) == 1

    # -- dead letters ------------------------------------------------------------------------

    async def dead_requeue(self, ids: Sequence[str] = (), oldest: int = 0) -> int:
        """Requeue the given dead ids, or the ``oldest`` n; return how many went back (each into
        its own partition; the oldest partition by partition)."""
        if (parts := await self._spread()) is not None:
            return await _over_partitions(parts, ids, oldest, await self._by_partition(ids), QueueAdmin.dead_requeue)
        k = self.keys
        args: list[Any] = [oldest] if oldest else [0, *ids]
        keys = [k.dead, k.pending, k.stats, k.task_prefix, k.priority_prefix, k.priorities, k.unique_prefix,
                *calls.group_keys(k)]
        return int(await self._scripts("dead_requeue", keys, args))

    async def dead_purge(self, ids: Sequence[str] = (), oldest: int = 0) -> int:
        """Delete the given dead ids, or the ``oldest`` n, with their records."""
        if (parts := await self._spread()) is not None:
            return await _over_partitions(parts, ids, oldest, await self._by_partition(ids), QueueAdmin.dead_purge)
        args: list[Any] = [oldest] if oldest else [0, *ids]
        return int(await self._scripts("dead_purge", [self.keys.dead, self.keys.task_prefix], args))

    async def dead_trim(self, most: int = 1000) -> tuple[list[str], list[str]]:
        """Evict dead tasks past the cap into the archive, at most ``most`` a call.

        Returns (ids evicted, ids that fell off the archive past its own cap).
        """
        k = self.keys
        evicted, dropped = await self._scripts(
            "dead_trim", [k.dead, k.dead_archive, k.stats, k.task_prefix],
            [self.settings.dead_cap, self.settings.dead_archive_cap, most])
        return [text(i) for i in evicted], [text(i) for i in dropped]

    async def dead_edit(self, task_id: str, payload: Any, by: str) -> bool:
        """Replace a dead task's payload, recording who and the payload replaced; False if not dead."""
        try:
            body = orjson.dumps(payload)
        except TypeError as exc:
            raise InvalidTask(f"'payload' is not JSON-serialisable: {exc}") from None
        where = await self.locate(task_id)
        return int(await where._scripts("dead_edit", [where.keys.task(task_id)], [body, by, EDITS_KEPT])) == 1

    async def dead_import(self, records: Sequence[tuple[str, list[str]]]) -> list[str]:
        """Recreate dead tasks (id, [field, value, ...]) whose ids do not exist; return those created
        (each in the partition its id names)."""
        if await self._spread() is not None:
            by_part = await self._by_partition([task_id for task_id, _ in records])
            fields = dict(records)
            return [i for part, ids in by_part.items() for i in await part.dead_import([(i, fields[i]) for i in ids])]
        k = self.keys
        raw = await self._scripts("dead_import", [k.dead, k.stats, k.task_prefix], [orjson.dumps(records)])
        return [text(i) for i in raw]

    async def dead_archived(self, before: str = "+", count: int = 1000) -> list[tuple[str, ArchivedTask]]:
        """Archived (evicted) dead tasks, newest first, from stream id ``before`` (exclusive); a partitioned
        queue's merged by stream id (each partition's Redis clock: ms, then a sequence)."""
        if (parts := await self._spread()) is not None:
            merged = [entry for part in parts for entry in await part.dead_archived(before, count)]
            merged.sort(key=lambda entry: tuple(map(int, entry[0].split("-"))), reverse=True)
            return merged[:count]
        end = "+" if before == "+" else "(" + before
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       await self.redis.xrevrange(self.keys.dead_archive, end, "-", count=count))
        out = []
        for entry_id, raw in entries:
            fields = {text(f): text(v) for f, v in raw.items()}
            task_id, evicted = fields.pop("task_id", ""), fields.pop("evicted_at", "0")
            out.append((text(entry_id), ArchivedTask(task_id=task_id, evicted_at=int(evicted), fields=fields)))
        return out

    async def dead_ids(self, start: int = 0, count: int = 50) -> list[str]:
        """Dead-lettered ids, newest first (over every partition, by when each died)."""
        if (parts := await self._spread()) is not None:
            heads = [i for part in parts for i in await part.dead_ids(0, start + count)]
            died = await self.task_fields(heads, ["finished_at"])
            order = sorted(zip(heads, died, strict=True), key=lambda row: int(row[1][0] or 0), reverse=True)
            return [task_id for task_id, _ in order[start : start + count]]
        return [text(i) for i in await self.redis.lrange(self.keys.dead, start, start + count - 1)]

    async def dead_kinds(self, start: int = 0, count: int = 1000) -> list[tuple[str, str, str]]:
        """(id, type, reason) of dead-lettered tasks from ``start``, newest first, in one call (a
        partitioned queue's one partition after the other, each newest first)."""
        if (parts := await self._spread()) is not None:
            out: list[tuple[str, str, str]] = []
            for part in parts:
                length = int(await part.redis.llen(part.keys.dead))
                if start < length and len(out) < count:
                    out += await part.dead_kinds(start, count - len(out))
                start = max(0, start - length)
            return out
        k = self.keys
        raw = await self._scripts("dead_kinds", [k.dead, k.task_prefix], [start, start + count - 1])
        return [(text(raw[i]), text(raw[i + 1]), text(raw[i + 2])) for i in range(0, len(raw), 3)]


async def _over_partitions(parts: Sequence[Queue], ids: Sequence[str], oldest: int, by_part: Mapping[Queue, list[str]],
                           action: Callable[..., Any]) -> int:
    """A dead-letter ``action`` (requeue, purge) on a partitioned queue: the ids in their partitions,
    or the ``oldest`` n partition by partition; how many it took."""
    if ids:
        return sum([await action(part, ids=part_ids) for part, part_ids in by_part.items()])
    done = 0
    for part in parts:
        if done < oldest:
            done += await action(part, oldest=oldest - done)
    return done
