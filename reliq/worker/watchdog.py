"""Task timeouts for a worker's runners with one periodic timer instead of one per task.

``asyncio.timeout`` arms and disarms a loop timer around every task; for short tasks that
was a quarter of a worker's CPU (profiled with py-spy on no-op tasks). Here each runner
records its deadline in a dict, and one loop wakes every ``tick`` seconds and cancels
the runners past theirs, so a timeout fires at most ``tick`` late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

#: How late a timeout may fire, seconds.
TICK_S = 0.05


class Watchdog:
    """Runs awaitables under deadlines checked by one loop (:meth:`run`)."""

    def __init__(self, tick: float = TICK_S) -> None:
        self.tick = tick
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    async def within(self, aw: Awaitable[T], timeout: float, task: asyncio.Task[Any] | None = None) -> T:
        """Await ``aw``; raise TimeoutError if it takes longer than ``timeout`` seconds.

        Like ``asyncio.timeout``, it must be awaited from the task it guards (``task``,
        which a caller that knows it passes: on Python 3.11 looking it up costs more
        than a no-op task); a cancellation from anywhere else passes through unchanged.
        """
        task = task or asyncio.current_task()
        assert task is not None
        self._deadlines[task] = asyncio.get_running_loop().time() + timeout
        try:
            return await aw
        except asyncio.CancelledError:
            if self._take_back(task) and not task.cancelling():
                raise TimeoutError from None
            raise  # cancelled from elsewhere too (shutdown): that one stands
        finally:
            del self._deadlines[task]
            self._take_back(task)  # expired, but the awaitable swallowed the cancel

    def _take_back(self, task: asyncio.Task[Any]) -> bool:
        """Withdraw our cancel of ``task``, if we made one; True if we had."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    async def run(self) -> None:
        """Cancel the tasks past their deadline, every ``tick`` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for task, deadline in self._deadlines.items():
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
