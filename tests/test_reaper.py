"""The reaper through ``run_once``: silent workers are reaped, live ones never, even after Redis stalls."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from reliq.connection import connect
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from reliq.worker.reaper import Reaper, outage_gap
from tests.util import held_by

LEASE, INTERVAL = 1.0, 0.1


async def _rounds(reaper: Reaper, seconds: float, every: float = INTERVAL) -> list[tuple[int, int]]:
    """Run the reaper's rounds every interval for ``seconds``, as its loop would."""
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        results.append(await reaper.run_once())
        await asyncio.sleep(every)
    return results


async def test_a_worker_silent_past_its_lease_is_reaped_and_its_task_requeued(queue: Queue) -> None:
    task_id = await held_by(queue, "w-dead")
    reaper = Reaper(queue, LEASE, INTERVAL, "w-reaper", grace=1.5)
    assert set(await _rounds(reaper, LEASE - 0.3)) == {(0, 0)}  # beat just now: alive
    assert (1, 0) in await _rounds(reaper, 0.6)
    record = await queue.get(task_id)
    assert record["state"] == "pending" and record["crashes"] == 1
    assert await queue.redis.zscore(queue.keys.workers, "w-dead") is None


async def test_only_one_reaper_a_round(queue: Queue) -> None:
    await held_by(queue, "w-dead")
    first, second = Reaper(queue, LEASE, 5.0, "a", 1.0), Reaper(queue, LEASE, 5.0, "b", 1.0)
    await queue.redis.zadd(queue.keys.workers, {"w-dead": 0})  # silent since 1970, and rounds went on

    results = await asyncio.gather(first.run_once(), second.run_once())
    assert sorted(results) == [(0, 0), (1, 0)]


def test_the_outage_gap_stays_under_half_the_lease_and_above_the_interval() -> None:
    assert outage_gap(15.0, 1.0) == 2.0
    assert outage_gap(3.0, 0.5) == 1.5
    assert outage_gap(2.0, 1.0) == 2.0  # a lone worker's rounds, 1 s apart, never open a grace
    assert outage_gap(1.0, 0.01) == 1.01


async def test_a_lone_reapers_own_rounds_never_open_a_grace(queue: Queue) -> None:
    """Rounds one interval apart, with a lease only twice the interval, still reap."""
    await held_by(queue, "w-dead")
    reaper = Reaper(queue, 0.6, 0.3, "w-reaper", grace=5.0)
    assert (1, 0) in await _rounds(reaper, 1.5, every=0.3)


async def test_after_redis_was_stalled_no_live_worker_is_taken_for_dead(tmp_path: Path) -> None:
    """Found by chaos (a Redis stall right after a restart): when Redis came back, every
    heartbeat was older than the lease, and the reapers that reconnected first requeued
    the tasks of workers whose heartbeats were still in their reconnect backoff."""
    server = RedisServer(tmp_path / "redis", aof=False).start()
    redis = connect(server.url)
    try:
        queue = Queue(redis, Settings(redis_url=server.url, queue="stall"))
        task_id = await held_by(queue, "w-live")
        dead_id = await held_by(queue, "w-dead")
        reaper = Reaper(queue, LEASE, INTERVAL, "w-reaper", grace=1.5)
        assert await reaper.run_once() == (0, 0)
        server.signal(signal.SIGSTOP)
        await asyncio.sleep(LEASE + 0.5)  # Redis stopped: nobody can beat
        server.signal(signal.SIGCONT)
        assert await reaper.run_once() == (0, 0)  # the reaper got in first: both look silent
        assert (await queue.get(task_id))["state"] == "processing"
        deadline = time.monotonic() + reaper.grace + 2
        while (await queue.get(dead_id))["state"] != "pending":  # the live one beats, the dead one never
            assert time.monotonic() < deadline, "the dead worker was never reaped after the grace"
            await queue.heartbeat("w-live", {"pid": 1}, ttl_s=60)
            await reaper.run_once()
            await asyncio.sleep(INTERVAL)
        assert (await queue.get(task_id))["state"] == "processing"
        assert await queue.redis.zscore(queue.keys.workers, "w-live") is not None
    finally:
        await redis.aclose()
        server.stop()
