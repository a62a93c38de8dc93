"""Share round trips between concurrent callers: the API's enqueue path.

The first call goes to Redis at once; calls that arrive while it is in flight wait and
go together in the next call. Nobody waits longer than one round trip for company, and
each caller still learns its own result only after Redis has acted on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Batches items submitted concurrently into calls of ``send(items) -> results``."""

    def __init__(self, send: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        """Send ``item`` (with whatever else is waiting) and return its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max]
                del self._waiting[: self._max]
                try:
                    results = await self._send([item for item, _ in batch])
                except BaseException as exc:  # every caller of the batch learns of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy = False
