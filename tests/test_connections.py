"""A worker's connections do not grow with its queues, and idle queues still wake it at once (issue 17 §2)."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

import reliq.builtins  # noqa: F401  (registers the built-in types)
from reliq.connection import connect
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from tests import procs
from tests.conns import connections_of
from tests.test_cancel_running import worker_running
from tests.util import eventually

QUEUES = 50
#: The issue's bound: a worker process's connections to one Redis (one shard).
MOST = 6


def names(n: int = QUEUES) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"c{tag}-{i}" for i in range(n)]


def worker_of(url: str, queues: Sequence[str], log: Path, *extra: str) -> procs.subprocess.Popen[bytes]:
    """A ``reliq work`` process serving every one of ``queues``."""
    return procs.worker(url, None, log, *(a for q in queues for a in ("--queue", q)), *extra)


async def up(queue: Queue, proc: procs.subprocess.Popen[bytes], log: Path) -> None:
    await eventually(lambda: proc.poll() is not None or _registered(queue), timeout=30, what="the worker up")
    assert proc.poll() is None, await asyncio.to_thread(log.read_text)


async def _registered(queue: Queue) -> bool:
    return bool(await queue.worker_ids())


async def all_done(queues: dict[str, Queue], ids: dict[str, str], timeout: float = 60) -> dict[str, dict[str, str]]:
    """Wait until every task (id -> queue name) has succeeded; their records."""
    records: dict[str, dict[str, str]] = {}

    async def done() -> bool:
        for task_id, name in ids.items():
            if task_id not in records:
                record = await queues[name].redis.hgetall(queues[name].keys.task(task_id))
                if record.get(b"state") == b"succeeded":
                    records[task_id] = {k.decode(): v.decode() for k, v in record.items()}
        return len(records) == len(ids)

    await eventually(done, timeout=timeout, what="every task succeeded")
    return records


async def test_a_worker_serving_50_queues_holds_6_connections_idle_and_under_load(
        redis_url: str, redis: Redis, tmp_path: Path) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    queue_names = names()
    settings = Settings(redis_url=redis_url)
    queues = {n: Queue(redis, settings, n) for n in queue_names}
    log = tmp_path / "worker.log"
    proc = worker_of(redis_url, queue_names, log, "--concurrency", "16")
    try:
        await up(queues[queue_names[0]], proc, log)
        await asyncio.sleep(3)  # every loop of every queue has run
        idle = await connections_of(proc.pid, redis, port)
        assert 0 < len(idle) <= MOST, idle
        assert sum(c["cmd"] in ("ssubscribe", "subscribe") for c in idle) == 1  # one pub/sub connection
        ids: dict[str, str] = {}
        most = len(idle)
        for _ in range(20):  # 2,000 tasks, spread over every queue, sampled as they run
            for i, name in enumerate(queue_names):
                ids[await queues[name].enqueue("sleep", {"seconds": 0.002 * (i % 3)})] = name
            most = max(most, len(await connections_of(proc.pid, redis, port)))
        await all_done(queues, ids)
        assert most <= MOST
        assert len(await connections_of(proc.pid, redis, port)) <= MOST
    finally:
        procs.stop(proc)


async def test_a_task_into_any_of_50_idle_queues_starts_at_once(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    """The lowest-weight queues too: none waits for the once-a-second claim of every queue."""
    queue_names = names()
    settings = Settings(redis_url=redis_url)
    queues = {n: Queue(redis, settings, n) for n in queue_names}
    log = tmp_path / "worker.log"
    weighted = [f"{n}={10 if i == 0 else 1}" for i, n in enumerate(queue_names)]
    proc = worker_of(redis_url, weighted, log)
    try:
        await up(queues[queue_names[0]], proc, log)
        await asyncio.sleep(1.5)
        waits = []
        for name in queue_names:  # one at a time: each into an idle worker
            task_id = await queues[name].enqueue("noop")
            record = (await all_done(queues, {task_id: name}, timeout=10))[task_id]
            waits.append(int(record["started_at"]) - int(record.get("enqueued_at") or record["queued_at"]))
            await asyncio.sleep(0.05)
        # Without wake-ups a task would wait up to a second (half of one on average).
        assert statistics.median(waits) <= 50, waits
        assert sorted(waits)[-3] <= 300, waits  # room for a loaded machine's worst moments
    finally:
        procs.stop(proc)


async def started_within(queue: Queue, task_id: str, seconds: float) -> None:
    async def done() -> bool:
        return (await queue.get(task_id))["state"] == "succeeded"
    await eventually(done, timeout=seconds, what=f"task {task_id} run")


async def test_a_lost_wake_up_still_gets_the_task_run(redis_url: str, redis: Redis) -> None:
    """Deaf to its queues' channels, the worker still claims from every queue once a second."""
    queue_names = names(5)
    settings = Settings(redis_url=redis_url)
    async with worker_running(settings, queues=queue_names) as worker:
        worker.nudges.ready = {f"nobody publishes on {n}": n for n in queue_names}  # messages unheard
        await asyncio.sleep(1.5)  # the wake-ups of the first subscription are taken
        queue = Queue(redis, settings, queue_names[-1])
        task_id = await queue.enqueue("noop")
        await started_within(queue, task_id, 5)


async def test_a_killed_pubsub_connection_is_made_again_and_its_gap_claimed(redis_url: str, redis: Redis) -> None:
    queue_names = names(5)
    settings = Settings(redis_url=redis_url)
    async with worker_running(settings, queues=queue_names) as worker:
        queue = Queue(redis, settings, queue_names[2])
        for _ in range(3):
            await eventually(lambda: worker.nudges.subscribed.is_set(), what="subscribed")
            assert await redis.client_kill_filter(_type="pubsub") >= 1
            task_id = await queue.enqueue("noop")  # published while nobody listened
            await started_within(queue, task_id, 5)


async def test_a_redis_restart_loses_no_task_to_a_lost_wake_up(aof_redis: RedisServer) -> None:
    queue_names = names(5)
    settings = Settings(redis_url=aof_redis.url)
    client = connect(aof_redis.url)
    try:
        async with worker_running(settings, queues=queue_names) as worker:
            queue = Queue(client, settings, queue_names[0])
            aof_redis.stop()
            aof_redis.start()
            ids = [await Queue(client, settings, n).enqueue("noop") for n in queue_names]
            for task_id, name in zip(ids, queue_names, strict=True):
                await started_within(Queue(client, settings, name), task_id, 15)
            await eventually(lambda: worker.nudges.subscribed.is_set(), timeout=15, what="subscribed again")
            task_id = await queue.enqueue("noop")
            await started_within(queue, task_id, 5)
    finally:
        await client.aclose()
