"""The Python client: enqueue, inspect and cancel tasks without going through HTTP.

``AsyncClient`` is for asyncio code: concurrent ``enqueue`` calls of one client share
round trips, as the API's requests do (:class:`~reliq.coalescer.Coalescer`), and each
still returns only once Redis has its task. ``Client`` is the same API for blocking
code, on redis-py's sync client (:class:`~reliq.syncredis.SyncRedis`): one client may
be shared by any number of threads, and it keeps working in processes forked after it
was created or used (gunicorn ``--preload``, uWSGI, ``multiprocessing``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from reliq import partitions, tracing
from reliq.coalescer import Coalescer
from reliq.connection import connect
from reliq.formats import Enqueued
from reliq.queue import Queue, TaskInfo, TaskSpec, make_spec
from reliq.settings import DEFAULT_REDIS_URL, Settings, check_queue_name
from reliq.syncqueue import SyncQueue
from reliq.syncredis import SyncRedis
from reliq.waiting import Waiters, wait_blocking

TaskItem = tuple[str, Any] | Mapping[str, Any]
#: The most tasks concurrent ``enqueue`` calls share one script call with.
MAX_SHARED = 1000
Q = TypeVar("Q", Queue, SyncQueue)


class EnqueueOptions(TypedDict, total=False):
    """The options of one ``enqueue`` call; each one left out takes the queue's default."""

    #: The queue to put the task on (default: the client's).
    queue: str | None
    #: Retries after the first failed attempt (default: the settings' ``max_retries``, 3).
    max_retries: int | None
    #: Seconds to wait before the task is due.
    delay: float | None
    #: When the task is due: an aware datetime or RFC 3339 string (wins over ``delay``).
    run_at: datetime | str | None
    #: Seconds one attempt may run (default: the type's, then the worker's).
    timeout: float | None
    #: The same key returns the first task's id and enqueues nothing new (for 24 h).
    idempotency_key: str | None
    #: While a task of the same type and payload (or ``unique_key``) is pending, scheduled,
    #: retrying or running, return its id instead of enqueuing (default: the type's; docs/retries.md).
    unique: bool | None
    #: The key of a unique task, instead of a hash of its payload; given, it makes the task unique.
    unique_key: str | None
    #: 0 (lowest) to 9 (highest), default 5: higher runs first, FIFO within a priority,
    #: with aging (docs/priorities.md).
    priority: int | None
    #: The task's key (a customer, an endpoint): its type's key concurrency and fair turns apply.
    key: str | None


class _Producer(Generic[Q]):
    """What both clients share: settings, the queues by name, and checking a task's fields."""

    settings: Settings
    queue: Q

    def _setup(self, redis_url: str, queue: str, settings: Settings | None, partitions: int | None) -> None:
        base = settings or Settings()
        self.settings = base.replace(redis_url=redis_url, queue=check_queue_name(queue),
                                     partitions=base.partitions if partitions is None else partitions)
        self.settings.check()
        self.queue = self._open_queue(None)
        self._queues: dict[str, Q] = {self.queue.name: self.queue}

    def _open_queue(self, name: str | None) -> Q:
        raise NotImplementedError

    def _queue(self, name: str | None) -> Q:
        if name is None:
            return self.queue
        if name not in self._queues:
            self._queues[name] = self._open_queue(check_queue_name(name))
        return self._queues[name]

    def _spec(self, type: str, payload: Any = None, *, trace: str | None = None, **options: Any) -> TaskSpec:
        # the active span's context goes with the task (OpenTelemetry, when installed)
        return make_spec(type, payload, trace=tracing.current() if trace is None else trace, **options)

    def _specs(self, tasks: Iterable[TaskItem]) -> list[TaskSpec]:
        specs, trace = [], tracing.current()  # one look-up a batch
        for item in tasks:
            if isinstance(item, Mapping):
                options = dict(item)
                specs.append(self._spec(options.pop("type", None), options.pop("payload", None), trace=trace,
                                        **options))
            else:
                specs.append(self._spec(*item, trace=trace))
        return specs


class AsyncClient(_Producer[Queue]):
    """Enqueue and inspect tasks of one queue from asyncio code."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, queue: str = "default",
                 settings: Settings | None = None, partitions: int | None = None) -> None:
        """``partitions``: the client's queue's (reliq/partitions.py), checked against (or, none
        recorded, recorded in) Redis at the first call; left out, the client reads them."""
        self.redis = connect(redis_url)
        self._coalescers: dict[str, Coalescer[TaskSpec, tuple[str, Enqueued]]] = {}
        self._setup(redis_url, queue, settings, partitions)
        self._agreed = not self.settings.partitions
        self._waiters = Waiters(redis_url, self.settings.max_waiters)

    def _open_queue(self, name: str | None) -> Queue:
        return Queue(self.redis, self.settings, name)

    async def _target(self, name: str | None) -> Queue:
        """The queue ``name``, its partitions agreed with ``partitions`` on first use."""
        if not self._agreed:
            await partitions.resolve(self.queue, self.settings.partitions)
            self._agreed = True
        return self._queue(name)

    async def enqueue(self, type: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue one task; return its id (an earlier one's for a repeated idempotency key, or the
        live one's of the same type and unique key).

        See :class:`EnqueueOptions` for the options: ``queue`` defaults to the client's;
        ``delay`` and ``timeout`` are seconds; ``run_at`` wins over ``delay``.
        """
        queue = await self._target(options.pop("queue", None))
        target, [spec] = await queue.place([self._spec(type, payload, **options)])  # one coalescer a partition
        if target.name not in self._coalescers:
            self._coalescers[target.name] = Coalescer(target.enqueue_specs, MAX_SHARED)
        task_id, _ = await self._coalescers[target.name].submit(spec)
        return task_id

    async def enqueue_many(self, tasks: Iterable[TaskItem], queue: str | None = None) -> list[str]:
        """Enqueue many tasks of one queue in one round trip, all or nothing; return their ids.

        Each item is ``(type, payload)`` or a mapping with ``type``, ``payload`` and the
        options of :meth:`enqueue` (but ``queue``, given once here).
        """
        specs = self._specs(tasks)
        if not specs:
            return []
        return [task_id for task_id, _ in await (await self._target(queue)).enqueue_specs(specs)]

    async def get(self, task_id: str, queue: str | None = None) -> TaskInfo:
        """The record of a task (raises reliq.TaskNotFound)."""
        return await (await self._target(queue)).get(task_id)

    async def cancel(self, task_id: str, queue: str | None = None) -> str:
        """Cancel a task; return the state it was in (raises CancelRefused once it has ended).

        ``"processing"``: it runs, and its worker was asked to stop it; it ends ``cancelled``
        within about a second (``wait`` for it), or ``succeeded`` had it finished first
        (docs/cancel.md).
        """
        return await (await self._target(queue)).cancel(task_id)

    async def ping(self) -> None:
        """Check that Redis answers (raises redis.ConnectionError otherwise): for readiness checks."""
        await self.redis.ping()

    async def wait(self, task_id: str, timeout: float | None = None, queue: str | None = None) -> TaskInfo:
        """The task's record once it has succeeded, died or been cancelled; check its ``state``.

        After ``timeout`` seconds (None: no limit) it returns the record as it is then.
        No polling: one blocking connection wakes every wait of this client (see
        :mod:`reliq.waiting`). Raises reliq.TaskNotFound for an unknown id.
        """
        return await self._waiters.wait(await self._target(queue), task_id, timeout)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._waiters.close()
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client(_Producer[SyncQueue]):
    """The blocking twin of :class:`AsyncClient`: thread-safe, and safe across ``os.fork()``.

    Each call is one round trip on a connection of its own thread; a forked child
    opens its own connections on its first call and never touches the parent's.
    """

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, queue: str = "default",
                 settings: Settings | None = None, partitions: int | None = None) -> None:
        """``partitions``: see :class:`AsyncClient`; checked here against Redis at once."""
        self.redis = SyncRedis(redis_url)
        self._setup(redis_url, queue, settings, partitions)
        if self.settings.partitions:
            agree_blocking(self.settings)

    def _open_queue(self, name: str | None) -> SyncQueue:
        return SyncQueue(self.redis, self.settings, name)

    def enqueue(self, type: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue one task; return its id. See :meth:`AsyncClient.enqueue`."""
        target = self._queue(options.pop("queue", None))
        [(task_id, _)] = target.enqueue_specs([self._spec(type, payload, **options)])
        return task_id

    def enqueue_many(self, tasks: Iterable[TaskItem], queue: str | None = None) -> list[str]:
        """See :meth:`AsyncClient.enqueue_many`."""
        specs = self._specs(tasks)
        if not specs:
            return []
        return [task_id for task_id, _ in self._queue(queue).enqueue_specs(specs)]

    def get(self, task_id: str, queue: str | None = None) -> TaskInfo:
        """See :meth:`AsyncClient.get`."""
        return self._queue(queue).get(task_id)

    def cancel(self, task_id: str, queue: str | None = None) -> str:
        """See :meth:`AsyncClient.cancel`."""
        return self._queue(queue).cancel(task_id)

    def ping(self) -> None:
        """See :meth:`AsyncClient.ping`."""
        self.redis.client.ping()

    def wait(self, task_id: str, timeout: float | None = None, queue: str | None = None) -> TaskInfo:
        """The task's record once it has ended, or after ``timeout`` s. See :meth:`AsyncClient.wait`.

        The same marks and wake-ups as the asyncio side; the calling thread blocks on a
        connection of its own (:func:`reliq.waiting.wait_blocking`).
        """
        return wait_blocking(self._queue(queue), task_id, timeout)

    def close(self) -> None:
        """Close this process's connections."""
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def agree_blocking(settings: Settings) -> None:
    """Agree on the partitions of ``settings.queue`` as :class:`AsyncClient` does, from blocking code
    (on a thread of its own, with a short-lived asyncio client: creating a map chooses its tags
    from the cluster's layout, which only the asyncio side reads)."""
    async def agree() -> None:
        redis = connect(settings.redis_url, max_connections=2)
        try:
            await partitions.resolve(Queue(redis, settings), settings.partitions)
        finally:
            await redis.aclose()

    failed: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run_catching(agree, failed), name="reliq-partitions")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _run_catching(coro: Callable[[], Coroutine[Any, Any, None]], failed: list[BaseException]) -> None:
    try:
        asyncio.run(coro())
    except BaseException as exc:  # handed to the calling thread
        failed.append(exc)
