"""Pause and resume (issue 14 §3): a whole queue, or one task type, held back fleet-wide.

Real Redis throughout, real worker processes where what the workers do is the point.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from redis.asyncio import Redis

from reliq.cli import main
from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.worker import Worker
from tests import procs
from tests.apps import pausable
from tests.util import eventually, move_in

APP = ("--app", "tests.apps.pausable")
assert pausable  # registers "slow" and "other" for the in-process worker
TOKEN = "pause-s3cret"


@pytest.fixture
async def client(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The monitor, in process."""
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as c:
        yield c


def starts(log: Path) -> dict[str, float]:
    """Task id -> wall time its handler started, from the handlers' log."""
    if not log.exists():
        return {}
    return {i: float(t) for i, t in (line.split() for line in log.read_text().splitlines())}


async def enqueue(queue: Queue, n: int, log: Path, sleep: float, type_: str = "slow") -> list[str]:
    return [await queue.enqueue(type_, {"log": str(log), "sleep": sleep}) for _ in range(n)]


async def states(queue: Queue, ids: list[str]) -> dict[str, str]:
    return {i: (await queue.get(i))["state"] for i in ids}


async def pending_ids(redis: Redis, queue: Queue) -> set[str]:
    return {i.decode() for i in await redis.lrange(queue.keys.pending, 0, -1)}


async def test_pause_under_load_stops_claims_lets_running_tasks_finish_and_keeps_pending(
    client: TestClient, queue: Queue, redis: Redis, redis_url: str, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    log = tmp_path / "starts.log"
    workers = [procs.worker(redis_url, queue.name, tmp_path / f"w{i}.log", *APP, "--concurrency", "4")
               for i in range(2)]
    try:
        ids = await enqueue(queue, 80, log, 0.3)
        await eventually(lambda: len(starts(log)) >= 12, timeout=20, what="tasks running on both workers")
        resp = await client.post(f"/queues/{queue.name}/pause")
        returned = time.time()
        assert resp.status == 200, await resp.text()
        since_ms = (await resp.json())["since_ms"]

        async def settled() -> bool:
            snap = await queue.snapshot()
            return snap["processing"] == 0 and snap["pending"] + snap["succeeded"] == len(ids)
        await eventually(settled, timeout=10, what="the running tasks finishing")
        ran = starts(log)
        await asyncio.sleep(1.5)  # paused workers ask again twice a second: still nothing may start
        assert starts(log) == ran
        now = await states(queue, ids)
        # Every task that ran was claimed before the pause landed (Redis clock); the rest are pending.
        for task_id in ran:
            record = await queue.get(task_id)
            assert record["state"] == "succeeded"
            assert record["started_at"] is not None
        for task_id in ran:
            raw = await redis.hget(queue.keys.task(task_id), "started_at")
            assert raw is not None and int(raw) < since_ms, task_id
        # Only tasks claimed before the pause may start after the call returned: at most one a slot.
        assert len([t for t in ran.values() if t > returned]) <= 8
        waiting = [i for i in ids if i not in ran]
        assert waiting and all(now[i] == "pending" for i in waiting)
        assert await pending_ids(redis, queue) == set(waiting)  # nothing moved out of pending
        assert all(now[i] == "succeeded" for i in ran)

        resp = await client.post(f"/queues/{queue.name}/resume")
        assert (await resp.json())["status"] == "resumed"
        resumed = time.time()
        await eventually(lambda: len(starts(log)) > len(ran), timeout=5, what="a task starting after the resume")
        assert min(t for i, t in starts(log).items() if i not in ran) - resumed < 1.5
        await eventually(lambda: len(starts(log)) == len(ids), timeout=30, what="every task run")

        async def all_succeeded() -> bool:
            return set((await states(queue, ids)).values()) == {"succeeded"}
        await eventually(all_succeeded, timeout=10, what="every task succeeded")
        assert set(starts(log)) == set(ids)
    finally:
        for w in workers:
            procs.stop(w)


async def test_pausing_one_type_holds_only_it_while_other_types_run(
    client: TestClient, queue: Queue, redis: Redis, redis_url: str, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    log = tmp_path / "starts.log"
    resp = await client.post(f"/queues/{queue.name}/pause?type=slow", json={"by": "ops"})
    assert resp.status == 200
    assert (await resp.json())["paused"]["types"]["slow"]["by"].startswith("ops ")
    worker = procs.worker(redis_url, queue.name, tmp_path / "w.log", *APP, "--concurrency", "4")
    try:
        slow = await enqueue(queue, 30, log, 0)
        other = await enqueue(queue, 30, log, 0, "other")

        async def others_done() -> bool:
            return set((await states(queue, other)).values()) == {"succeeded"}
        await eventually(others_done, timeout=20, what="the other type running")
        assert not set(starts(log)) & set(slow)
        assert set((await states(queue, slow)).values()) == {"pending"}
        snap = await queue.snapshot()
        assert snap["held"] == 30 and snap["pending"] == 30  # set aside, and still counted as pending
        assert snap["paused"]["types"]["slow"]["held"] == 30 and snap["paused"]["queue"] is None
        held = [i.decode() for i in await redis.lrange(queue.keys.held("slow"), 0, -1)]
        assert sorted(held) == sorted(slow)

        resp = await client.post(f"/queues/{queue.name}/resume?type=slow")
        assert (await resp.json())["requeued_held"] == 30

        async def slow_done() -> bool:
            return set((await states(queue, slow)).values()) == {"succeeded"}
        await eventually(slow_done, timeout=20, what="the held type running after the resume")
        assert set(starts(log)) == set(slow) | set(other)
        assert not await redis.exists(queue.keys.paused, queue.keys.held("slow"))
    finally:
        procs.stop(worker)


async def test_a_worker_killed_while_paused_loses_nothing(
    client: TestClient, queue: Queue, redis: Redis, redis_url: str, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    log = tmp_path / "starts.log"
    worker = procs.worker(redis_url, queue.name, tmp_path / "w.log", *APP, "--concurrency", "3")
    try:
        await client.post(f"/queues/{queue.name}/pause?type=other")
        other = await enqueue(queue, 5, log, 0, "other")
        slow = await enqueue(queue, 10, log, 2.0)
        await eventually(lambda: len(starts(log)) >= 3, timeout=20, what="three long tasks running")
        await client.post(f"/queues/{queue.name}/pause")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # A new worker: the reaper takes the dead one's running tasks back to pending, nothing starts.
        worker = procs.worker(redis_url, queue.name, tmp_path / "w2.log", *APP, "--concurrency", "3")

        async def recovered() -> bool:
            snap = await queue.snapshot()
            return snap["processing"] == 0 and snap["recovered"] == 3
        await eventually(recovered, timeout=20, what="the dead worker's tasks recovered")
        assert len(starts(log)) == 3
        assert set((await states(queue, slow + other)).values()) == {"pending"}
        await client.post(f"/queues/{queue.name}/resume")
        await client.post(f"/queues/{queue.name}/resume?type=other")

        async def all_succeeded() -> bool:
            return set((await states(queue, slow + other)).values()) == {"succeeded"}
        await eventually(all_succeeded, timeout=30, what="every task succeeded after the resume")
    finally:
        procs.stop(worker)


async def test_a_paused_worker_neither_spins_nor_is_woken_and_resumes_at_once(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    calls = {"take": 0}
    take = queue.take

    async def counted_take(*args: Any, **kwargs: Any) -> Any:
        calls["take"] += 1
        return await take(*args, **kwargs)

    queue.take = counted_take  # type: ignore[method-assign]
    await queue.pause(None, "test")
    worker = Worker(queue, settings.replace(concurrency=2))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: worker.nudges.subscribed.is_set(), what="the worker listening")
        [task_id] = await enqueue(queue, 1, tmp_path / "starts.log", 0)
        await asyncio.sleep(0.5)
        calls["take"] = 0
        for _ in range(20):  # nudges, as of tasks into an empty pending, ten a second
            await queue.redis.spublish(queue.ready_channel, "")
            await asyncio.sleep(0.1)
        assert (await queue.get(task_id))["state"] == "pending"
        assert calls["take"] <= 6  # about twice a second, whatever the nudges: not woken while paused
        await queue.resume(None)
        resumed = time.monotonic()

        async def done() -> bool:
            return (await queue.get(task_id))["state"] == "succeeded"
        await eventually(done, timeout=3, what="the task after the resume")
        assert time.monotonic() - resumed < 0.45  # the resume nudges: not the next half-second check
    finally:
        stop.set()
        await running


async def test_an_id_moved_in_as_the_pause_landed_goes_back_uncounted(
    queue: Queue, redis: Redis, tmp_path: Path
) -> None:
    ids = await enqueue(queue, 3, tmp_path / "log", 0)
    await queue.pause(None, "test")
    moved = await move_in(queue, "w1")
    assert moved == ids[0]
    take = await queue.take("w1", 10, moved)
    assert take.paused and take.tasks == []
    assert await redis.lrange(queue.keys.processing("w1"), 0, -1) == []
    # Back at the end workers take from, as if never moved: same order, no attempt spent.
    assert [i.decode() for i in await redis.lrange(queue.keys.pending, 0, -1)] == ids[::-1]
    record = await queue.get(ids[0])
    assert (record["state"], record["attempts"]) == ("pending", 0)
    await queue.resume(None)
    tasks, _ = await queue.claim("w1", 10)
    assert [t.id for t in tasks] == ids


async def test_resuming_a_type_puts_its_held_tasks_back_in_order_in_chunks(
    queue: Queue, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("reliq.pausing.RESUME_CHUNK", 4)
    await queue.pause("slow", "test")
    ids = await enqueue(queue, 10, tmp_path / "log", 0)
    other = await enqueue(queue, 2, tmp_path / "log", 0, "other")
    take = await queue.take("w1", 5)
    assert [t.id for t in take.tasks] == other and not take.paused
    assert await redis.llen(queue.keys.pending) == 0
    assert (await queue.snapshot())["pending"] == 10
    assert await queue.resume("slow") == (True, 10)
    assert await queue.resume("slow") == (False, 0)
    tasks, _ = await queue.claim("w2", 20)
    assert [t.id for t in tasks] == ids  # oldest first, as they were enqueued
    assert not await redis.exists(queue.keys.paused)


async def test_pause_state_is_in_stats_metrics_and_queues_and_survives_a_monitor_restart(
    queue: Queue, settings: Settings
) -> None:
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as first:
        assert (await first.post(f"/queues/{queue.name}/pause?type=slow")).status == 200
        assert (await first.post(f"/queues/{queue.name}/pause")).status == 200
        again = await (await first.post(f"/queues/{queue.name}/pause")).json()
        assert again["status"] == "already paused"
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as second:
        stats = await (await second.get("/stats")).json()
        assert stats["paused"]["queue"]["by"].startswith("(monitor")
        assert set(stats["paused"]["types"]) == {"slow"}
        body = await (await second.get("/metrics")).text()
        assert f'reliq_queue_paused{{queue="{queue.name}",type="*"}} 1.0' in body
        assert f'reliq_queue_paused{{queue="{queue.name}",type="slow"}} 1.0' in body
        assert f'reliq_queue_paused_seconds{{queue="{queue.name}",type="*"}}' in body
        listed = await (await second.get("/queues")).json()
        [detail] = listed["details"]
        assert detail["name"] == queue.name and detail["paused"] is True and detail["pending"] == 0
        assert listed["queues"] == [queue.name]
        await second.post(f"/queues/{queue.name}/resume")
        body = await (await second.get("/metrics")).text()
        assert f'reliq_queue_paused{{queue="{queue.name}",type="*"}} 0.0' in body


@pytest.mark.parametrize("path", ["/queues/bad%7Bname/pause", "/queues/a:b/resume",
                                  "/queues/{q}/pause?type=*", "/queues/{q}/pause?type=" + "x" * 201,
                                  "/queues/{q}/pause?type="])
async def test_bad_pause_requests_get_400_and_write_nothing(
    client: TestClient, queue: Queue, redis: Redis, path: str  # type: ignore[type-arg]
) -> None:
    resp = await client.post(path.replace("{q}", queue.name))
    assert resp.status == 400, await resp.text()
    assert "error" in await resp.json()
    assert not await redis.exists(queue.keys.paused)


async def test_pausing_a_queue_the_monitor_does_not_watch_is_404(client: TestClient, queue: Queue) -> None:  # type: ignore[type-arg]
    resp = await client.post(f"/queues/{queue.name}-other/pause")
    assert resp.status == 404


async def test_pause_and_resume_need_the_write_token(queue: Queue, settings: Settings, redis: Redis) -> None:
    settings = settings.replace(api_token=TOKEN, read_token="reader")
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as c:
        assert (await c.post(f"/queues/{queue.name}/pause")).status == 401
        read = {"Authorization": "Bearer reader"}
        assert (await c.post(f"/queues/{queue.name}/pause", headers=read)).status == 403
        assert not await redis.exists(queue.keys.paused)
        write = {"Authorization": f"Bearer {TOKEN}"}
        assert (await c.post(f"/queues/{queue.name}/pause", headers=write)).status == 200
        assert (await queue.paused())["queue"] is not None
        assert (await c.post(f"/queues/{queue.name}/resume", headers=read)).status == 403
        assert (await c.post(f"/queues/{queue.name}/resume", headers=write)).status == 200
        assert (await queue.paused())["queue"] is None


def test_the_pause_and_resume_commands(queue: Queue, redis_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["pause", queue.name, "--type", "slow", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "paused type 'slow'" in result.output
    result = runner.invoke(main, ["pause", queue.name, "--redis-url", redis_url])
    assert result.exit_code == 0 and f"paused queue {queue.name!r}" in result.output
    paused = asyncio.run(_paused(queue, redis_url))
    assert paused["queue"] is not None and set(paused["types"]) == {"slow"}
    assert "(cli)" in paused["queue"]["by"]
    for args in (["--type", "slow"], []):
        result = runner.invoke(main, ["resume", queue.name, *args, "--redis-url", redis_url])
        assert result.exit_code == 0 and "resumed" in result.output
    paused = asyncio.run(_paused(queue, redis_url))
    assert paused == {"queue": None, "types": {}}


@pytest.mark.parametrize("args", [["bad{name"], ["a b"], ["{q}", "--type", "*"], ["{q}", "--type", ""]])
def test_the_pause_command_refuses_bad_input_with_exit_2_and_writes_nothing(
    queue: Queue, redis_url: str, args: list[str]
) -> None:
    for command in ("pause", "resume"):
        result = CliRunner().invoke(main, [command, *[a.replace("{q}", queue.name) for a in args],
                                           "--redis-url", redis_url])
        assert result.exit_code == 2, result.output
    assert asyncio.run(_paused(queue, redis_url)) == {"queue": None, "types": {}}


async def _paused(queue: Queue, redis_url: str) -> Any:
    from reliq.connection import connect
    redis = connect(redis_url)
    try:
        return await Queue(redis, queue.settings).paused()
    finally:
        await redis.aclose()


async def test_cancelling_a_held_task_takes_it_out_of_its_held_list(
    queue: Queue, redis: Redis, tmp_path: Path
) -> None:
    await queue.pause("slow", "test")
    ids = await enqueue(queue, 3, tmp_path / "log", 0)
    assert (await queue.take("w1", 5)).tasks == []  # all three set aside
    assert await queue.cancel(ids[1]) == "pending"
    assert [i.decode() for i in await redis.lrange(queue.keys.held("slow"), 0, -1)] == [ids[2], ids[0]]
    snap = await queue.snapshot()
    assert (snap["held"], snap["pending"], snap["cancelled"]) == (2, 2, 1)
