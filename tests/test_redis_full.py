"""A Redis at its maxmemory (noeviction): producers are refused with 507, workers drain it.

Every test runs a real redis-server with a maxmemory small enough to fill in a second.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

import reliq
from reliq.connection import connect
from reliq.memory import read
from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.scripts import has_shebang, source
from reliq.settings import Settings
from tests import procs
from tests.util import api_client, eventually

PAYLOAD = "x" * 200
#: The scripts that empty a queue: they must run on a Redis at its maxmemory.
DRAINING = ("claim", "settle", "reap_scan", "reap", "heartbeat", "release", "promote", "cancel", "count", "trim",
            "resume",  # resume: a paused type's held tasks must be able to go back and drain
            "types")  # a worker declares its types' enqueue defaults before its first claim


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone with 4 MB of maxmemory (noeviction)."""
    server = RedisServer(tmp_path / "redis", aof=False, extra=("--maxmemory", "4mb")).start()
    yield server
    server.stop()


@pytest.fixture
async def full_redis(small_redis: RedisServer) -> AsyncIterator[Redis]:
    client = connect(small_redis.url)
    yield client
    await client.aclose()


async def fill(client: TestClient, batch: int = 200) -> tuple[list[str], Any]:  # type: ignore[type-arg]
    """POST /tasks until the API refuses; the ids it accepted and the refusal."""
    accepted: list[str] = []
    while True:
        resp = await client.post("/tasks", json={"tasks": [{"type": "noop", "payload": PAYLOAD}] * batch})
        if resp.status != 202:
            return accepted, resp
        accepted += (await resp.json())["task_ids"]
        assert len(accepted) < 100_000, "Redis never filled up"


#: How far past its maxmemory past_the_wall puts Redis: more than what closing a few connections frees.
PAST_THE_WALL = 256 * 1024


async def past_the_wall(redis: Redis) -> None:
    """Lower maxmemory below what Redis uses, if need be, so that it refuses every write but the scripts'
    that drain a queue.

    Redis refuses a batch at its first write when, holding the whole request, it is past its
    maxmemory, and lets a batch it accepted run to its end: a refused batch may thus leave room
    for smaller writes (24 KB, measured, once records of format 2 made a batch's records smaller
    against its request), and the refusal alone does not say that Redis is past its wall.
    """
    mem = await read(redis)
    await redis.config_set("maxmemory", min(mem.max, mem.used - PAST_THE_WALL))


def test_only_the_scripts_that_drain_a_queue_run_on_a_full_redis() -> None:
    assert all(source(name).startswith("#!lua flags=allow-oom\n") for name in DRAINING)
    # what adds tasks must be refused at the wall: that refusal is the producers' 507
    assert not any(has_shebang(name) for name in ("enqueue", "dead_import"))


async def test_full_redis_answers_507_writes_nothing_and_a_worker_started_on_it_drains_it(
        small_redis: RedisServer, full_redis: Redis, queue_name: str, tmp_path: Path) -> None:
    settings = Settings(redis_url=small_redis.url, queue=queue_name, max_memory_ratio=1.0)
    queue = Queue(full_redis, settings)
    async with api_client(queue, settings) as client:
        accepted, refusal = await fill(client)
        assert refusal.status == 507 and refusal.headers["Retry-After"].isdigit()
        assert "out of memory" in (await refusal.json())["error"]
        await past_the_wall(full_redis)
        one = await client.post("/task", json={"type": "noop"})
        assert one.status == 507 and "Retry-After" in one.headers
    # the refused batches wrote nothing: every record and list entry is an accepted task's
    assert await full_redis.llen(queue.keys.pending) == len(accepted)
    assert (await queue.snapshot())["enqueued"] == len(accepted)
    with pytest.raises(OutOfMemoryError):  # Redis itself is at the wall
        await full_redis.set("probe", "x")
    async with reliq.AsyncClient(small_redis.url, queue_name) as producer:
        with pytest.raises(reliq.RedisFull, match="out of memory"):
            await producer.enqueue("noop", PAYLOAD)
    with reliq.Client(small_redis.url, queue_name) as blocking, pytest.raises(reliq.RedisFull):
        blocking.enqueue("noop", PAYLOAD)

    log = tmp_path / "worker.log"
    worker = procs.worker(small_redis.url, queue_name, log)
    try:
        async def drained() -> bool:
            return all(s == "succeeded" for s in await queue.states(accepted))
        await eventually(drained, timeout=60, interval=0.2, what="every accepted task succeeded")
        assert worker.poll() is None, log.read_text()
        assert "Traceback" not in log.read_text()
        mem = await read(full_redis)
        assert mem.used < mem.max, "a success frees memory (compact record)"
        await full_redis.set("probe", "x")  # room again for writes
        async with reliq.AsyncClient(small_redis.url, queue_name, settings) as producer:
            accepted.append(await producer.enqueue("noop"))  # accepted again, and run
        await eventually(drained, what="the new task succeeded")
        snap = await queue.snapshot()
        assert snap["succeeded"] == len(accepted) and snap["dead"] == 0
        assert snap["refused_memory"] >= 1
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        procs.stop(worker)
    assert "Traceback" not in log.read_text()


async def test_producers_are_refused_ahead_of_the_wall_and_refusals_are_counted(
        small_redis: RedisServer, full_redis: Redis, queue_name: str) -> None:
    settings = Settings(redis_url=small_redis.url, queue=queue_name)  # max_memory_ratio 0.9
    queue = Queue(full_redis, settings)
    async with api_client(queue, settings) as client:
        accepted, refusal = await fill(client, batch=50)
        body = await refusal.json()
        assert refusal.status == 507 and "90% admission limit" in body["error"], body
    await full_redis.set("probe", "x")  # below the wall: workers (and this write) still have room
    mem = await read(full_redis)
    assert 0.6 * mem.max < mem.used < 0.9 * mem.max  # the guard errs on the early side between readings
    assert await full_redis.llen(queue.keys.pending) == len(accepted)

    mon = TestClient(TestServer(monitor.create_app(queue, settings)))
    await mon.start_server()
    try:
        async def counted() -> bool:
            stats = await (await mon.get("/stats")).json()
            return bool(stats["refused_memory"] >= 50)
        # refusals reach Redis with the guard's next reading (at most SAMPLE_S later)
        async with api_client(queue, settings) as client:
            async def refused_again() -> bool:
                await client.post("/task", json={"type": "noop"})
                return await counted()
            await eventually(refused_again, timeout=5, interval=0.2, what="refusals counted in /stats")
        stats = await (await mon.get("/stats")).json()
        assert stats["redis_memory"]["max_bytes"] == 4 * 2**20
        assert stats["redis_memory"]["used_bytes"] > 0.6 * 4 * 2**20
        text = await (await mon.get("/metrics")).text()
        assert f'reliq_redis_memory_max_bytes{{queue="{queue_name}"}} 4.194304e+06' in text
        assert f'reliq_redis_memory_used_bytes{{queue="{queue_name}"}}' in text
        assert f'reliq_tasks_refused_memory_total{{queue="{queue_name}"}}' in text
    finally:
        await mon.close()


async def test_a_worker_on_a_full_redis_with_nothing_to_do_stays_up_and_runs_tasks_once_there_is_room(
        small_redis: RedisServer, full_redis: Redis, queue_name: str, tmp_path: Path) -> None:
    n = 0
    with pytest.raises(OutOfMemoryError):  # fill Redis with something else: the queue is empty
        while True:
            await full_redis.set(f"ballast:{n}", "x" * 10_000)
            n += 1
    log = tmp_path / "worker.log"
    worker = procs.worker(small_redis.url, queue_name, log)
    try:
        # idle, it waits on its pub/sub connection, which a full Redis does not refuse
        await asyncio.sleep(3)
        assert worker.poll() is None and "Traceback" not in log.read_text()
        await full_redis.delete(*[f"ballast:{i}" for i in range(n)])
        queue = Queue(full_redis, Settings(redis_url=small_redis.url, queue=queue_name))
        task_id = await queue.enqueue("noop")

        async def ran() -> bool:
            return (await queue.get(task_id))["state"] == "succeeded"
        await eventually(ran, timeout=30, interval=0.2, what="the task ran once there was room")
        assert worker.poll() is None
    finally:
        procs.stop(worker)
    assert "Traceback" not in log.read_text()


async def test_a_worker_declaring_schedules_starts_on_a_full_redis_and_drains_it(
        small_redis: RedisServer, full_redis: Redis, queue_name: str) -> None:
    from reliq.schedules import Declared, make_schedule, read_one
    from reliq.worker import Worker

    settings = Settings(redis_url=small_redis.url, queue=queue_name, max_memory_ratio=1.0)
    queue = Queue(full_redis, settings)
    async with api_client(queue, settings) as client:
        accepted, refusal = await fill(client)
    assert refusal.status == 507
    schedule = make_schedule("nightly", type="noop", cron="@daily")
    worker = Worker(queue, settings, burst=True, schedules=[Declared(schedule, None)])
    assert await asyncio.wait_for(worker.run(), 120)  # past declaring its schedule, then drained
    assert (await read_one(queue, "nightly"))["source"] == "code"
    assert set(await queue.states(accepted)) <= {"succeeded", ""}
