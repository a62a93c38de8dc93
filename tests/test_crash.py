"""Real crashes: workers SIGKILLed and SIGTERMed, redis-server killed and restarted."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from reliq.queue import Queue, make_spec
from reliq.redis_server import RedisServer, free_port
from reliq.settings import Settings
from tests import procs
from tests.util import eventually


async def enqueue_many(queue: Queue, type: str, payloads: list[object], **options: object) -> list[str]:
    specs = [make_spec(type, p, **options) for p in payloads]  # type: ignore[arg-type]
    return [task_id for task_id, _ in await queue.enqueue_specs(specs)]


async def states(queue: Queue, ids: list[str]) -> dict[str, str]:
    """task id -> state, read for every id."""
    return {task_id: state or "missing" for task_id, state in zip(ids, await queue.states(ids), strict=True)}


async def all_in(queue: Queue, ids: list[str], wanted: set[str]) -> bool:
    return set((await states(queue, ids)).values()) <= wanted


async def test_worker_killed_mid_run_another_worker_finishes_every_task(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    ids = await enqueue_many(queue, "sleep", [0.2] * 200)
    await a_worker_killed_once(queue, settings, tmp_path / "w1.log", "20",
                               lambda: _succeeded_at_least(queue, 30), what="30 tasks done")
    held = (await queue.snapshot())["processing"]
    assert held > 0, "the kill should catch tasks in flight"
    await a_second_worker_finishes(queue, settings, ids, tmp_path / "w2.log", "50")
    snap = await queue.snapshot()
    assert snap["recovered"] >= held and snap["processing"] == 0 and snap["succeeded"] == 200


async def test_worker_killed_holding_tasks_claimed_ahead_every_one_runs_again(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    """Short tasks: the worker holds more than its runners (claimed ahead) when it dies."""
    ids = await enqueue_many(queue, "sleep", [0.001] * 20_000)
    lists: dict[str, list[str]] = {}

    async def holding_ahead() -> bool:
        lists.clear()
        lists.update(await queue.processing_lists())
        return len(lists) == 1 and len(next(iter(lists.values()))) > 16

    await a_worker_killed_once(queue, settings, tmp_path / "w1.log", "16", holding_ahead,
                               what="more tasks held than runners")
    [owner] = lists
    held = await queue.processing_ids(owner)  # as the kill left it
    assert len(held) > 16, held
    await a_second_worker_finishes(queue, settings, ids, tmp_path / "w2.log", "16")
    assert {(await queue.get(i))["crashes"] for i in held} == {1}  # charged, run alone, not quarantined


async def a_worker_killed_once(queue: Queue, settings: Settings, log: Path, concurrency: str,
                               condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Start a worker, SIGKILL it as soon as ``condition`` holds, and wait until it is gone.

    ``condition`` is checked with the worker stopped (SIGSTOP), so it still holds at the kill:
    on a loaded machine a running worker went on settling between the check and the kill. A
    passing state is caught frozen, so the worker runs 50 ms between checks (woken for 2 ms, a
    loaded machine gave it no CPU at all before the next stop).
    """
    worker = procs.worker(settings.redis_url, queue.name, log, "--concurrency", concurrency)

    async def holds_while_stopped() -> bool:
        worker.send_signal(signal.SIGSTOP)
        if await condition():
            return True
        worker.send_signal(signal.SIGCONT)
        return False

    try:
        await eventually(holds_while_stopped, timeout=20, interval=0.05, what=what)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        procs.stop(worker)


async def a_second_worker_finishes(queue: Queue, settings: Settings, ids: list[str], log: Path,
                                   concurrency: str) -> None:
    """Start another worker and wait until every one of ``ids`` has succeeded."""
    second = procs.worker(settings.redis_url, queue.name, log, "--concurrency", concurrency)
    try:
        await eventually(lambda: all_in(queue, ids, {"succeeded"}), timeout=60, what="every task succeeded")
    finally:
        procs.stop(second)
    final = await states(queue, ids)
    assert [i for i, s in final.items() if s != "succeeded"] == []


async def _succeeded_at_least(queue: Queue, n: int) -> bool:
    return (await queue.snapshot())["succeeded"] >= n


async def test_sigterm_finishes_running_tasks_hands_back_the_rest_and_exits_0(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    quick = await enqueue_many(queue, "sleep", [0.3] * 10)
    slow = await enqueue_many(queue, "sleep", [60] * 5)
    proc = procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--concurrency", "15",
                        "--drain-timeout", "1.5")
    try:
        await eventually(lambda: _processing(queue, 15), timeout=15, what="15 tasks running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (tmp_path / "w.log").read_text()
    finally:
        procs.stop(proc)
    final = await states(queue, quick + slow)
    assert {final[i] for i in quick} == {"succeeded"}
    assert {final[i] for i in slow} == {"pending"}
    for task_id in slow:
        assert (await queue.get(task_id))["attempts"] == 0
    snap = await queue.snapshot()
    assert (snap["pending"], snap["processing"], snap["workers"]) == (5, 0, 0)


async def _processing(queue: Queue, n: int) -> bool:
    return (await queue.snapshot())["processing"] >= n


async def test_redis_killed_and_restarted_on_its_aof_every_accepted_task_completes(
    aof_redis: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    from reliq.connection import connect

    port = free_port()
    api = procs.api(aof_redis.url, queue_name, port, tmp_path / "api.log")
    worker = procs.worker(aof_redis.url, queue_name, tmp_path / "w.log", "--concurrency", "16")
    accepted: list[str] = []
    refused = 0
    try:
        async with aiohttp.ClientSession() as http:
            start = time.monotonic()
            killed = restarted = False
            n = 0
            while time.monotonic() - start < 4.0:
                elapsed = time.monotonic() - start
                if not killed and elapsed > 1.0:
                    aof_redis.kill()
                    killed = True
                if killed and not restarted and elapsed > 1.8:
                    aof_redis.start()
                    restarted = True
                n += 1
                status, body = await _post(http, port, {"type": "sleep", "payload": 0.01})
                if status == 202:
                    accepted.append(body["task_id"])
                else:
                    assert status == 503, body
                    refused += 1
        assert killed and restarted and refused > 0 and len(accepted) > 50
        redis = connect(aof_redis.url)
        queue = Queue(redis, Settings(queue=queue_name))
        try:
            await eventually(lambda: all_in(queue, accepted, {"succeeded"}), timeout=30,
                             what="every accepted task succeeded")
        finally:
            await redis.aclose()
    finally:
        procs.stop(api)
        procs.stop(worker)


async def _post(http: aiohttp.ClientSession, port: int, task: dict[str, object]) -> tuple[int, dict[str, str]]:
    try:
        async with http.post(f"http://127.0.0.1:{port}/task", json=task,
                             timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return 0, {"error": str(exc)}


async def test_poison_pill_is_quarantined_and_the_innocent_tasks_it_crashed_with_succeed(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    innocent = await enqueue_many(queue, "sleep", [0.05] * 20)
    [poison] = await enqueue_many(queue, "poison", [None])
    everything = [*innocent, poison]

    def start() -> subprocess.Popen[bytes]:
        return procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--concurrency", "30",
                            "--app", "tests.apps.poison", "--crash-limit", "2")

    crashes = 0
    proc = start()
    deadline = time.monotonic() + 60
    try:
        while not await all_in(queue, everything, {"succeeded", "dead"}):
            assert time.monotonic() < deadline, await states(queue, everything)
            if proc.poll() is not None:  # the poison took it down: start a replacement
                crashes += 1
                proc = start()
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        procs.stop(proc)
    info = await queue.get(poison)
    assert (info["state"], info["reason"], info["crashes"]) == ("dead", "crashed", 2)
    # its page shows both crashes, each by the worker that died (two processes: two ids)
    assert [(r["attempt"], r["outcome"], r["state"]) for r in info["runs"]] == [
        (1, "crashed", "pending"), (2, "crashed", "dead")]
    assert len({r["worker"] for r in info["runs"]}) == 2
    crashed_with = [r for i in innocent for r in (await queue.get(i))["runs"]]  # those it took down with it
    assert {r["outcome"] for r in crashed_with} <= {"crashed"}
    assert set((await states(queue, innocent)).values()) == {"succeeded"}
    assert crashes == 2  # once among the innocents, once alone: then quarantined
