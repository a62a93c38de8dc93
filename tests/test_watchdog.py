"""The worker's task timeouts: one periodic timer for every runner (reliq/worker/watchdog.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from reliq.worker.watchdog import Watchdog


@pytest.fixture
async def watchdog():  # type: ignore[no-untyped-def]
    dog = Watchdog(tick=0.01)
    loop = asyncio.create_task(dog.run())
    yield dog
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def test_a_slow_awaitable_times_out_within_a_tick(watchdog: Watchdog) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await watchdog.within(asyncio.sleep(5), 0.05)
    assert 0.05 <= asyncio.get_running_loop().time() - started < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_fast_awaitable_returns_its_value(watchdog: Watchdog) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert [await watchdog.within(answer(), 1.0) for _ in range(100)] == [42] * 100


async def test_a_cancel_from_elsewhere_is_not_turned_into_a_timeout(watchdog: Watchdog) -> None:
    task = asyncio.create_task(watchdog.within(asyncio.sleep(5), 10.0))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_awaitable_that_swallows_the_cancel_leaves_no_cancel_pending(watchdog: Watchdog) -> None:
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        return "done anyway"

    assert await watchdog.within(stubborn(), 0.02) == "done anyway"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.03)  # the runner goes on undisturbed


async def test_deadlines_are_per_task(watchdog: Watchdog) -> None:
    async def run(seconds: float, timeout: float) -> str:
        try:
            await watchdog.within(asyncio.sleep(seconds), timeout)
            return "ok"
        except TimeoutError:
            return "timeout"

    assert await asyncio.gather(run(0.01, 1.0), run(1.0, 0.03), run(0.02, 1.0)) == ["ok", "timeout", "ok"]
