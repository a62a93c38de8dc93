"""The Python client: enqueue, inspect and cancel tasks without going through HTTP.

``AsyncClient`` is for asyncio code; ``Client`` is the same API for plain code (it runs
an ``AsyncClient`` on a private event loop thread, so it also works inside notebooks
and other programs that already run a loop). Concurrent ``enqueue`` calls of one client
share round trips, as the API's requests do (:class:`~reliq.coalescer.Coalescer`):
each still returns only once Redis has its task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from reliq.coalescer import Coalescer
from reliq.connection import connect
from reliq.queue import Queue, TaskInfo, TaskSpec, make_spec
from reliq.settings import DEFAULT_REDIS_URL, Settings, check_queue_name

T = TypeVar("T")
TaskItem = tuple[str, Any] | Mapping[str, Any]
#: The most tasks concurrent ``enqueue`` calls share one script call with.
MAX_SHARED = 1000


class AsyncClient:
    """Enqueue and inspect tasks of one queue from asyncio code."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, queue: str = "default",
                 settings: Settings | None = None) -> None:
        self.settings = (settings or Settings()).replace(redis_url=redis_url, queue=check_queue_name(queue))
        self.redis = connect(redis_url)
        self.queue = Queue(self.redis, self.settings)
        self._queues = {queue: self.queue}
        self._coalescers: dict[str, Coalescer[TaskSpec, tuple[str, bool]]] = {}

    def _queue(self, name: str | None) -> Queue:
        if name is None:
            return self.queue
        if name not in self._queues:
            self._queues[name] = Queue(self.redis, self.settings, check_queue_name(name))
        return self._queues[name]

    def _spec(self, type: str, payload: Any = None, **options: Any) -> TaskSpec:
        return make_spec(type, payload, default_max_retries=self.settings.max_retries, **options)

    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      max_retries: int | None = None, delay: float | None = None,
                      run_at: datetime | str | None = None, timeout: float | None = None,
                      idempotency_key: str | None = None) -> str:
        """Enqueue one task; return its id (an earlier one's for a repeated idempotency key).

        ``queue`` defaults to the client's; ``delay`` and ``timeout`` are seconds;
        ``run_at`` is an aware datetime or RFC 3339 string and wins over ``delay``.
        """
        spec = self._spec(type, payload, max_retries=max_retries, delay=delay, run_at=run_at, timeout=timeout,
                          idempotency_key=idempotency_key)
        target = self._queue(queue)
        if target.name not in self._coalescers:
            self._coalescers[target.name] = Coalescer(target.enqueue_specs, MAX_SHARED)
        task_id, _ = await self._coalescers[target.name].submit(spec)
        return task_id

    async def enqueue_many(self, tasks: Iterable[TaskItem], queue: str | None = None) -> list[str]:
        """Enqueue many tasks of one queue in one round trip, all or nothing; return their ids.

        Each item is ``(type, payload)`` or a mapping with ``type``, ``payload`` and the
        options of :meth:`enqueue` (but ``queue``, given once here).
        """
        specs = []
        for item in tasks:
            if isinstance(item, Mapping):
                options = dict(item)
                specs.append(self._spec(options.pop("type", None), options.pop("payload", None), **options))
            else:
                specs.append(self._spec(*item))
        if not specs:
            return []
        return [task_id for task_id, _ in await self._queue(queue).enqueue_specs(specs)]

    async def get(self, task_id: str, queue: str | None = None) -> TaskInfo:
        """The record of a task (raises reliq.TaskNotFound)."""
        return await self._queue(queue).get(task_id)

    async def cancel(self, task_id: str, queue: str | None = None) -> str:
        """Cancel a pending or scheduled task; return the state it was in (raises CancelRefused)."""
        return await self._queue(queue).cancel(task_id)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """The blocking twin of :class:`AsyncClient`."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, queue: str = "default",
                 settings: Settings | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reliq-client", daemon=True)
        self._thread.start()
        self._async = self._run(self._make(redis_url, queue, settings))

    @staticmethod
    async def _make(redis_url: str, queue: str, settings: Settings | None) -> AsyncClient:
        return AsyncClient(redis_url, queue, settings)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def enqueue(self, type: str, payload: Any = None, **options: Any) -> str:
        """See :meth:`AsyncClient.enqueue`."""
        return self._run(self._async.enqueue(type, payload, **options))

    def enqueue_many(self, tasks: Iterable[TaskItem], queue: str | None = None) -> list[str]:
        """See :meth:`AsyncClient.enqueue_many`."""
        return self._run(self._async.enqueue_many(list(tasks), queue))

    def get(self, task_id: str, queue: str | None = None) -> TaskInfo:
        """See :meth:`AsyncClient.get`."""
        return self._run(self._async.get(task_id, queue))

    def cancel(self, task_id: str, queue: str | None = None) -> str:
        """See :meth:`AsyncClient.cancel`."""
        return self._run(self._async.cancel(task_id, queue))

    def close(self) -> None:
        """Close connections and stop the private loop."""
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
