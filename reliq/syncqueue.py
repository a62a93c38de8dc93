"""The producer's side of a queue for blocking code: enqueue, get and cancel over :class:`SyncRedis`.

The same scripts, keys and replies as :class:`reliq.queue.Queue` (both build their calls
and read the replies with ``reliq.calls``); only the I/O is blocking.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.exceptions import ResponseError

from reliq import calls, partitions
from reliq.errors import RedisFull
from reliq.formats import Enqueued, RecordFormat
from reliq.keys import QueueKeys
from reliq.partitions import PartitionMap
from reliq.queue import TaskInfo, TaskSpec, record_of
from reliq.settings import Settings
from reliq.syncredis import SyncRedis


class SyncQueue:
    """One named queue, as a blocking producer sees it."""

    def __init__(self, redis: SyncRedis, settings: Settings, name: str | None = None,
                 partition: int | None = None, of: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.name = name or settings.queue
        self.keys = QueueKeys(self.name)
        self._enqueue_keys = calls.enqueue_keys(self.keys)
        #: See :class:`reliq.queue.Queue`: None for the queue producers name, else a partition's index.
        self.partition = partition
        self.of = of or self.name
        #: The record format its producers write, as last read with the map (None: not yet).
        self.record_format: RecordFormat | None = None
        self.layout: partitions.Layout[SyncQueue] = partitions.Layout(
            self, lambda tag, i: SyncQueue(redis, settings, tag, i, self.name), fixed=partition is not None)

    def parts(self) -> list[SyncQueue]:
        """See :meth:`reliq.queue.Queue.parts`."""
        if self.layout.stale:  # read by the script: on this thread's own connection, as every call
            _, raw = self.redis.script("partition_map", [self.keys.partitions], ["", ""])
            self.layout.adopt(PartitionMap.decode(self.name, raw))
            new_as = None
            for part in self.layout.parts:  # see reliq.queue_base.QueueBase.adopt_read
                fmt, *_ = self.redis.script("records", *calls.records_call(part.keys, None, new_as))
                part.record_format = RecordFormat(int(fmt))
                new_as = new_as or part.record_format
            if self.layout.pmap.n > 1:  # see reliq.queue.Queue.parts
                self.layout.router.unique_types = partitions.unique_types(self.redis.client.hgetall(self.keys.types))
        return self.layout.parts

    def locate(self, task_id: str) -> SyncQueue:
        """See :meth:`reliq.queue.Queue.locate`."""
        self.parts()
        return self.layout.locate(task_id)

    def enqueue_specs(self, specs: Sequence[TaskSpec]) -> list[tuple[str, Enqueued]]:
        """Enqueue all ``specs`` atomically (in one partition); (task id, created now) for each.

        Raises QueueFull past ``max_pending``, RedisFull when Redis is at its maxmemory
        (unlike the asyncio client, not ahead of it: there is no memory guard here yet).
        """
        self.parts()
        target, specs = self.layout.place(specs)
        if target is not self:
            return target.enqueue_specs(specs)
        args = calls.enqueue_args(self.settings, calls.enqueue_batch(specs, self.settings.max_retries),
                                  self.record_format)
        try:
            raw = self.redis.script("enqueue", self._enqueue_keys, args)
        except ResponseError as exc:
            refusal = calls.refused(exc, self.name)
            if isinstance(refusal, RedisFull):
                self.redis.script("count", *calls.count_refused(self.keys, len(specs)))
            raise refusal or exc from None
        return calls.enqueued(raw, specs, self.name, self.settings)

    def get(self, task_id: str) -> TaskInfo:
        """The record of ``task_id``; raise TaskNotFound when there is none."""
        where = self.locate(task_id)
        return record_of(task_id, self.redis.client.hgetall(where.keys.task(task_id)))

    def watch(self, task_id: str, hub: str, ttl_ms: int) -> str:
        """See :meth:`reliq.queue.Queue.watch`."""
        return calls.text(self.redis.script("watch", calls.watch_keys(self.keys, task_id),
                                            calls.watch_args(task_id, hub, ttl_ms)))

    def unwatch(self, task_id: str, hub: str) -> None:
        """See :meth:`reliq.queue.Queue.unwatch`."""
        self.redis.script("unwatch", calls.unwatch_keys(self.keys), [task_id, hub])

    def next_wake(self, hub: str, block_s: float, client: redis.Redis) -> str | None:
        """See :meth:`reliq.queue.Queue.next_wake` (``client``: :meth:`SyncRedis.blocking`'s)."""
        got = client.blpop([self.keys.wake(hub)], block_s)
        return calls.text(got[1]) if got else None

    def cancel(self, task_id: str) -> str:
        """Cancel a task that has not started; return the state it was in."""
        where = self.locate(task_id)
        raw = self.redis.script("cancel", calls.cancel_keys(where.keys), calls.cancel_args(task_id, self.settings))
        return calls.cancelled(task_id, raw)
