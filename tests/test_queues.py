"""Several named queues served by one worker, by weight or in strict order."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from reliq.errors import ConfigError
from reliq.queue import Queue
from reliq.registry import Registry
from reliq.settings import Settings
from reliq.worker import Worker
from reliq.worker.fetcher import Fetcher
from tests import procs
from tests.util import eventually


def queues(redis: Redis, settings: Settings, *weighted: tuple[str, int]) -> list[tuple[Queue, int]]:
    return [(Queue(redis, settings, f"{settings.queue}-{name}"), w) for name, w in weighted]


def test_weighted_order_visits_each_queue_first_in_proportion_to_its_weight(
    redis: Redis, settings: Settings
) -> None:
    fetcher = Fetcher(queues(redis, settings, ("critical", 6), ("default", 3), ("low", 1)), "w")
    firsts = Counter(fetcher.order()[0].name.rsplit("-", 1)[1] for _ in range(20_000))
    for name, share in (("critical", 0.6), ("default", 0.3), ("low", 0.1)):
        assert abs(firsts[name] / 20_000 - share) < 0.02, firsts


def test_strict_order_is_by_descending_weight(redis: Redis, settings: Settings) -> None:
    fetcher = Fetcher(queues(redis, settings, ("low", 1), ("critical", 6), ("default", 3)), "w", strict=True)
    assert [q.name.rsplit("-", 1)[1] for q in fetcher.order()] == ["critical", "default", "low"]


@pytest.mark.parametrize(("specs", "error"), [
    (("a=0",), "positive whole number"), (("a=x",), "positive whole number"), (("a", "a=2"), "named twice"),
    (("a{b}",), "queue name"),
])
def test_bad_queue_specs_are_refused(specs: tuple[str, ...], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings.load({}, queues=specs)


def test_queues_flag_sets_the_default_queue_to_the_first() -> None:
    s = Settings.load({}, queues=("critical=6", "low"))
    assert s.queue == "critical" and s.weighted_queues() == [("critical", 6), ("low", 1)]


async def test_strict_worker_runs_every_higher_priority_task_first(redis: Redis, settings: Settings) -> None:
    ran: list[str] = []

    async def record(payload: Any) -> None:
        ran.append(payload)

    registry = Registry()
    registry.add("record", record)
    weighted = queues(redis, settings, ("low", 1), ("critical", 6))
    low, critical = weighted[0][0], weighted[1][0]
    for _ in range(30):
        await low.enqueue("record", "low")
        await critical.enqueue("record", "critical")
    worker = Worker(weighted, settings.replace(concurrency=1), registry, burst=True, strict=True)
    assert await asyncio.wait_for(worker.run(), 30)
    assert ran == ["critical"] * 30 + ["low"] * 30


async def test_weighted_worker_serves_every_queue_and_settles_each_in_its_own(
    redis: Redis, settings: Settings
) -> None:
    weighted = queues(redis, settings, ("a", 5), ("b", 1))
    ids = {q.name: [await q.enqueue("noop", i) for i in range(100)] for q, _ in weighted}
    worker = Worker(weighted, settings.replace(concurrency=8), burst=True)
    assert await asyncio.wait_for(worker.run(), 30)
    for queue, _ in weighted:
        assert {(await queue.get(i))["state"] for i in ids[queue.name]} == {"succeeded"}
        snap = await queue.snapshot()
        assert (snap["succeeded"], snap["processing"]) == (100, 0)


async def test_an_idle_worker_starts_a_task_of_any_queue_at_once(redis: Redis, settings: Settings) -> None:
    weighted = queues(redis, settings, ("critical", 6), ("default", 3), ("low", 1))
    worker = Worker(weighted, settings, burst=False)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: _registered(weighted[2][0]), what="worker registered")
        await asyncio.sleep(0.1)  # let it block, idle, on every queue
        for queue, _ in reversed(weighted):
            task_id = await queue.enqueue("noop")
            await eventually(lambda q=queue, t=task_id: _succeeded(q, t), timeout=5, what="task done")
            info = await queue.get(task_id)
            wait_ms = _ms(info["started_at"]) - _ms(info["enqueued_at"])
            assert wait_ms < 1000, f"{queue.name}: waited {wait_ms} ms"
    finally:
        stop.set()
        assert await asyncio.wait_for(run, 10)


async def _registered(queue: Queue) -> bool:
    return (await queue.snapshot())["workers"] == 1


async def _succeeded(queue: Queue, task_id: str) -> bool:
    return (await queue.get(task_id))["state"] == "succeeded"


def _ms(iso: str | None) -> int:
    from datetime import datetime

    assert iso is not None
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_reliq_work_serves_several_queues_by_weight(redis: Redis, settings: Settings, tmp_path: Path) -> None:
    weighted = queues(redis, settings, ("critical", 6), ("low", 1))
    ids = [(q, await q.enqueue("noop")) for q, _ in weighted for _ in range(20)]
    proc = procs.worker(settings.redis_url, None, tmp_path / "w.log", "--queue", f"{weighted[0][0].name}=6",
                        "--queue", weighted[1][0].name)
    try:
        await eventually(lambda: _all_succeeded(ids), timeout=20, what="both queues served")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        procs.stop(proc)


async def _all_succeeded(ids: list[tuple[Queue, str]]) -> bool:
    return all([await _succeeded(q, t) for q, t in ids])
