"""The worker in-process: handlers, retries with backoff, dead letters, timeouts, drain."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

from redis.asyncio import Redis

import reliq.builtins  # noqa: F401  (registers the built-in types)
from reliq.connection import connect
from reliq.queue import Queue
from reliq.registry import REGISTRY, Context, Registry
from reliq.retry import retry_delay_ms
from reliq.settings import Settings
from reliq.worker import Worker
from tests.util import eventually


def registry_with(**handlers: Any) -> Registry:
    """A registry with the built-ins plus ``handlers`` (type name -> function)."""
    registry = Registry()
    for name in REGISTRY.names():
        handler = REGISTRY.get(name)
        assert handler is not None
        registry.add(name, handler.fn, timeout=handler.timeout)
    for name, fn in handlers.items():
        registry.add(name.replace("_", "-"), fn)
    return registry


async def run_burst(settings: Settings, registry: Registry = REGISTRY, timeout: float = 30) -> Worker:
    """Run a worker until its queue is empty."""
    redis = connect(settings.redis_url)
    try:
        worker = Worker(Queue(redis, settings), settings, registry, burst=True)
        assert await asyncio.wait_for(worker.run(), timeout)
        return worker
    finally:
        await redis.aclose()


async def test_task_that_fails_twice_then_succeeds_ends_succeeded_after_3_attempts(
    queue: Queue, settings: Settings
) -> None:
    calls: list[int] = []

    async def flaky(payload: Any, ctx: Context) -> str:
        calls.append(ctx.attempt)
        if len(calls) <= 2:
            raise RuntimeError(f"failure {len(calls)}")
        return "ok"

    task_id = await queue.enqueue("flaky", {"n": 1})
    await run_burst(settings, registry_with(flaky=flaky))
    info = await queue.get(task_id)
    assert (info["state"], info["attempts"], info["failures"], info["result"]) == ("succeeded", 3, 2, "ok")
    assert info["last_error"] is None  # a succeeded record is compact: errors on the way are not kept
    assert calls == [1, 2, 3]
    snap = await queue.snapshot()
    assert (snap["succeeded"], snap["failed"], snap["retried"], snap["dead"]) == (1, 2, 2, 0)


async def test_task_that_always_fails_is_dead_lettered_after_1_plus_3_attempts_with_backoff(
    queue: Queue, settings: Settings
) -> None:
    settings = settings.replace(retry_base=0.1)
    starts: list[float] = []

    async def broken(payload: Any) -> None:
        starts.append(time.monotonic())
        raise ValueError("always")

    task_id = await queue.enqueue("broken")
    await run_burst(settings, registry_with(broken=broken))
    info = await queue.get(task_id)
    assert (info["state"], info["reason"], info["attempts"]) == ("dead", "error", 4)
    assert info["last_error"] == "ValueError: always"
    assert await queue.dead_ids() == [task_id]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Backoff n is base*2^(n-1) with equal jitter: never less than half of it.
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 0.1 * 2 ** (n - 1) / 2 - 0.01, gaps


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    for n in range(1, 8):
        d = retry_delay_ms(n, base=1.0, cap=30.0)
        full = min(30.0, 2 ** (n - 1)) * 1000
        assert full / 2 <= d <= full


async def test_unknown_type_is_dead_lettered_at_once(queue: Queue, settings: Settings) -> None:
    task_id = await queue.enqueue("no-such-type", max_retries=5)
    await run_burst(settings)
    info = await queue.get(task_id)
    assert (info["state"], info["reason"], info["attempts"]) == ("dead", "unknown_type", 1)


async def test_permanent_error_skips_retries(queue: Queue, settings: Settings) -> None:
    bad = await queue.enqueue("email-notification", "not-an-address")
    good = await queue.enqueue("email-notification", "user@example.com")
    await run_burst(settings)
    bad_info, good_info = await queue.get(bad), await queue.get(good)
    assert (bad_info["state"], bad_info["reason"], bad_info["attempts"]) == ("dead", "permanent", 1)
    assert good_info["state"] == "succeeded" and good_info["result"] == {"sent_to": "user@example.com"}


async def test_timeout_per_task_and_per_type(queue: Queue, settings: Settings) -> None:
    registry = registry_with()
    registry.add("slow", lambda payload: asyncio.sleep(5), timeout=0.1)

    async def slow_async(payload: Any) -> None:
        await asyncio.sleep(5)

    registry.add("slow-async", slow_async, timeout=0.1)
    by_type = await queue.enqueue("slow-async", max_retries=0)
    by_task = await queue.enqueue("sleep", 5, max_retries=0, timeout=0.1)
    await run_burst(settings, registry)
    for task_id in (by_type, by_task):
        info = await queue.get(task_id)
        assert (info["state"], info["reason"]) == ("dead", "timeout")
        assert info["last_error"] == "timed out after 0.1s"


async def test_plain_functions_run_in_a_thread_pool(queue: Queue, settings: Settings) -> None:
    threads: list[str] = []

    def blocking(payload: Any) -> int:
        threads.append(threading.current_thread().name)
        time.sleep(0.01)
        return int(payload) * 2

    ids = [await queue.enqueue("blocking", i) for i in range(5)]
    await run_burst(settings, registry_with(blocking=blocking))
    assert [(await queue.get(i))["result"] for i in ids] == [0, 2, 4, 6, 8]
    assert threads and all(name.startswith("reliq-task") for name in threads)


async def test_many_tasks_all_succeed_and_counters_agree(queue: Queue, settings: Settings) -> None:
    ids = [i for i, _ in await queue.enqueue_specs([_spec("noop", n) for n in range(2000)])]
    worker = await run_burst(settings)
    assert worker.processed == 2000
    states = {(await queue.get(i))["state"] for i in ids}
    assert states == {"succeeded"}
    snap = await queue.snapshot()
    assert (snap["enqueued"], snap["succeeded"], snap["pending"], snap["processing"]) == (2000, 2000, 0, 0)


async def test_stop_drains_running_tasks_then_hands_back_the_rest(queue: Queue, settings: Settings,
                                                                  redis: Redis) -> None:
    settings = settings.replace(drain_timeout=0.3, concurrency=4)
    quick = [await queue.enqueue("sleep", 0.05) for _ in range(2)]
    slow = [await queue.enqueue("sleep", 30) for _ in range(2)]
    worker_redis = connect(settings.redis_url)
    worker = Worker(Queue(worker_redis, settings), settings, REGISTRY)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    await eventually(lambda: worker.busy == 4, what="4 tasks running")
    stop.set()
    assert await asyncio.wait_for(run, 10) is True
    await worker_redis.aclose()
    for task_id in quick:
        assert (await queue.get(task_id))["state"] == "succeeded"
    for task_id in slow:  # handed back, the interrupted attempt not counted
        info = await queue.get(task_id)
        assert (info["state"], info["attempts"]) == ("pending", 0)
    snap = await queue.snapshot()
    assert (snap["pending"], snap["processing"], snap["workers"]) == (2, 0, 0)


async def test_claims_ahead_what_the_runners_finish_in_one_claim_round_trip(queue: Queue,
                                                                          settings: Settings) -> None:
    worker = Worker(queue, settings.replace(concurrency=64))
    worker._claim_s = 0.001
    for run_s, ahead in ((0.00001, 64), (0.001, 64), (0.004, 16), (0.1, 1), (1.0, 0), (30.0, 0)):
        worker._run_s = run_s
        assert worker.ahead() == ahead, run_s


async def test_tasks_claimed_ahead_wait_in_the_workers_list_and_go_back_uncounted_on_stop(
    queue: Queue, settings: Settings, redis: Redis
) -> None:
    settings = settings.replace(concurrency=2, drain_timeout=10)
    gate = asyncio.Event()

    async def hold(payload: Any) -> None:
        await gate.wait()

    ids = [await queue.enqueue("hold", i) for i in range(10)]
    worker_redis = connect(settings.redis_url)
    worker = Worker(Queue(worker_redis, settings), settings, registry_with(hold=hold))
    worker._run_s = worker._claim_s / 100  # as after a run of short tasks
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    await eventually(lambda: len(worker.held) == 4, what="2 tasks running and 2 claimed ahead")
    await asyncio.sleep(0.1)  # and no more
    assert set(worker.held) == set(ids[:4]) and worker.status()["in_flight"] == 2
    assert {i.decode() for i in await redis.lrange(queue.keys.processing(worker.id), 0, -1)} == set(ids[:4])
    stop.set()
    await asyncio.sleep(0.1)
    gate.set()  # the two running finish in the drain; the two waiting never start
    assert await asyncio.wait_for(run, 10) is True
    await worker_redis.aclose()
    infos = [await queue.get(i) for i in ids]
    assert [(i["state"], i["attempts"]) for i in infos] == [("succeeded", 1)] * 2 + [("pending", 0)] * 8
    snap = await queue.snapshot()
    assert (snap["pending"], snap["processing"], snap["workers"]) == (8, 0, 0)


async def test_second_signal_skips_the_drain(queue: Queue, settings: Settings) -> None:
    settings = settings.replace(drain_timeout=30)
    task_id = await queue.enqueue("sleep", 30)
    worker_redis = connect(settings.redis_url)
    worker = Worker(Queue(worker_redis, settings), settings, REGISTRY)
    stop, hard_stop = asyncio.Event(), asyncio.Event()
    run = asyncio.create_task(worker.run(stop, hard_stop))
    await eventually(lambda: worker.busy == 1, what="the task running")
    stop.set()
    await asyncio.sleep(0.05)
    hard_stop.set()
    assert await asyncio.wait_for(run, 5) is True
    await worker_redis.aclose()
    assert (await queue.get(task_id))["state"] == "pending"


def _spec(type: str, payload: Any) -> Any:
    from reliq.queue import make_spec

    return make_spec(type, payload)
