"""Unique while alive: one task a type and key while it is pending, scheduled, retrying or running.

Every end frees the key (succeeded, dead, cancelled, deleted, quarantined); a lock left
behind by anything never blocks, since an enqueue that finds its holder ended takes it over.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from reliq import type_defaults
from reliq.client import AsyncClient, Client
from reliq.connection import connect
from reliq.formats import Enqueued
from reliq.queue import Outcome, Queue, make_spec
from reliq.registry import Registry
from reliq.settings import Settings
from reliq.type_defaults import TypeDefaults
from reliq.worker import Worker
from tests.keyspace import keyspace
from tests.test_metrics import families, scrape, value
from tests.test_shell import cli
from tests.util import api_client, eventually

W = "w1"


def lock_name(ttype: str, key: str) -> str:
    """The lock's name after the unique prefix, as enqueue.lua builds it."""
    return f"{len(ttype)}:{ttype}:{key}"


def payload_key(payload: Any) -> str:
    """The default key of a payload: the SHA1 of its JSON as stored."""
    return hashlib.sha1(orjson.dumps(payload)).hexdigest()


async def enqueue(queue: Queue, ttype: str = "noop", payload: Any = None, **options: Any) -> tuple[str, Enqueued]:
    [result] = await queue.enqueue_specs([make_spec(ttype, payload, **options)])
    return result


async def run_burst(settings: Settings, registry: Registry) -> None:
    redis = connect(settings.redis_url)
    try:
        assert await asyncio.wait_for(Worker(Queue(redis, settings), settings, registry, burst=True).run(), 60)
    finally:
        await redis.aclose()


async def test_twenty_concurrent_enqueues_over_several_connections_make_one_task(
    queue: Queue, settings: Settings, redis: Redis
) -> None:
    clients = [connect(settings.redis_url) for _ in range(4)]
    try:
        queues = [Queue(c, settings) for c in clients]
        results = await asyncio.gather(*(enqueue(queues[i % 4], "noop", {"n": 1}, unique=True) for i in range(20)))
    finally:
        for c in clients:
            await c.aclose()
    ids = {task_id for task_id, _ in results}
    assert len(ids) == 1
    assert sorted(fate for _, fate in results) == [Enqueued.CREATED] + [Enqueued.EXISTING] * 19
    [task_id] = ids
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [task_id]
    assert space["unique:" + lock_name("noop", payload_key({"n": 1}))] == task_id
    assert space[f"task:{task_id}"]["unique"] == lock_name("noop", payload_key({"n": 1}))
    assert space["stats"] == {"enqueued": "1", "unique_hits": "19"}


async def test_twenty_concurrent_http_requests_get_one_202_and_nineteen_200s_with_its_id(
    queue: Queue, settings: Settings
) -> None:
    async with api_client(queue, settings) as client:
        async def post() -> tuple[int, dict[str, Any]]:
            resp = await client.post("/task", json={"type": "noop", "payload": {"order": 7}, "unique": True})
            return resp.status, await resp.json()

        answers = await asyncio.gather(*(post() for _ in range(20)))
        ids = {body["task_id"] for _, body in answers}
        assert len(ids) == 1
        assert sorted(status for status, _ in answers) == [200] * 19 + [202]
        for status, body in answers:
            expected = ("queued", None) if status == 202 else ("duplicate", "unique")
            assert (body["status"], body.get("duplicate")) == expected
        # a batch with the same key twice: the second stands for the first, and so does the live one
        resp = await client.post("/tasks", json=[{"type": "noop", "payload": 1, "unique_key": "k"},
                                                 {"type": "noop", "payload": 2, "unique_key": "k"},
                                                 {"type": "noop", "payload": {"order": 7}, "unique": True}])
        assert resp.status == 202
        body = await resp.json()
        first = body["task_ids"][0]
        assert body["task_ids"][1:] == [first, *ids]
        assert [(t["status"], t.get("duplicate")) for t in body["tasks"]] == [
            ("queued", None), ("duplicate", "unique"), ("duplicate", "unique")]
    assert (await queue.snapshot())["enqueued"] == 2


async def test_the_blocking_client_in_threads_and_the_async_client_share_the_key(
    queue: Queue, settings: Settings
) -> None:
    got: list[str] = []
    with Client(settings.redis_url, queue.name, settings) as client:
        threads = [threading.Thread(target=lambda: got.append(client.enqueue("noop", 5, unique_key="job-5")))
                   for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    async with AsyncClient(settings.redis_url, queue.name, settings) as aclient:
        got += await asyncio.gather(*(aclient.enqueue("noop", 6, unique_key="job-5") for _ in range(10)))
        other = await aclient.enqueue("noop", 5, unique_key="job-6")
        other_type = await aclient.enqueue("sleep", 5, unique_key="job-5")
    assert len(set(got)) == 1 and len(got) == 20
    assert len({got[0], other, other_type}) == 3  # a key is unique within its type


async def test_the_key_stays_taken_while_the_task_is_scheduled_retrying_or_running(
    queue: Queue, settings: Settings
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    runs = 0

    async def flaky(payload: Any) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        started.set()
        await release.wait()

    registry = Registry()
    registry.add("flaky", flaky)
    first, fate = await enqueue(queue, "flaky", "x", unique=True, delay=0.2)
    assert fate == Enqueued.CREATED and (await queue.get(first))["state"] == "scheduled"
    assert await enqueue(queue, "flaky", "x", unique=True) == (first, Enqueued.EXISTING)
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(queue, settings.replace(retry_base=0.3), registry).run(stop))
    try:
        await eventually(lambda: _state(queue, first, "retrying"), timeout=30, what="retrying")
        assert await enqueue(queue, "flaky", "x", unique=True) == (first, Enqueued.EXISTING)
        await asyncio.wait_for(started.wait(), 30)
        assert (await queue.get(first))["state"] == "processing"
        assert await enqueue(queue, "flaky", "x", unique=True) == (first, Enqueued.EXISTING)
        release.set()
        await eventually(lambda: _state(queue, first, "succeeded"), timeout=30, what="succeeded")
    finally:
        release.set()
        stop.set()
        await running
    second, fate = await enqueue(queue, "flaky", "x", unique=True)
    assert fate == Enqueued.CREATED and second != first


async def _state(queue: Queue, task_id: str, state: str) -> bool:
    return (await queue.get(task_id))["state"] == state


@pytest.mark.parametrize("end", ["succeeded", "dead", "cancelled", "deleted"])
async def test_every_end_frees_the_key(queue: Queue, settings: Settings, redis: Redis, end: str) -> None:
    ttype = {"succeeded": "noop", "dead": "fail"}.get(end, "noop")
    first, _ = await enqueue(queue, ttype, "p", unique=True, max_retries=0)
    lock = "unique:" + lock_name(ttype, payload_key("p"))
    if end in ("succeeded", "dead"):
        await run_burst(settings, _builtins())
    else:
        await queue.cancel(first, forget=end == "deleted")
    if end != "deleted":
        assert (await queue.get(first))["state"] == end
    assert lock not in await keyspace(redis, queue.name)  # freed by the end itself, not only taken over
    second, fate = await enqueue(queue, ttype, "p", unique=True)
    assert fate == Enqueued.CREATED and second != first


def _builtins() -> Registry:
    from reliq.registry import REGISTRY

    registry = Registry()
    for name in ("noop", "fail"):
        handler = REGISTRY.get(name)
        assert handler is not None
        registry.add(name, handler.fn)
    return registry


async def test_a_quarantined_task_frees_its_key(queue: Queue, settings: Settings, redis: Redis) -> None:
    first, _ = await enqueue(queue, "noop", "p", unique=True)
    [task], _ = await queue.claim(W, 1)
    assert task.unique == lock_name("noop", payload_key("p"))  # claimed with it, for the settle
    await redis.hset(queue.keys.task(first), "crashes", settings.crash_limit - 1)
    await redis.zadd(queue.keys.workers, {W: 0})  # silent since the epoch
    assert await queue.reap(W, settings.lease) == (0, 1, 0)
    assert (await queue.get(first))["reason"] == "crashed"
    assert "unique:" + lock_name("noop", payload_key("p")) not in await keyspace(redis, queue.name)
    assert (await enqueue(queue, "noop", "p", unique=True))[1] == Enqueued.CREATED


@pytest.mark.parametrize("by", ["its worker", "the reaper", "the release"])
async def test_a_running_task_cancelled_frees_its_key_whoever_ends_it(queue: Queue, redis: Redis, by: str) -> None:
    first, _ = await enqueue(queue, "noop", "p", unique=True)
    await queue.heartbeat(W, {}, ttl_s=10)
    [task], _ = await queue.claim(W, 1)
    assert await queue.cancel(first) == "processing"
    assert await enqueue(queue, "noop", "p", unique=True) == (first, Enqueued.EXISTING)  # alive until stopped
    if by == "its worker":
        assert await queue.settle(W, [Outcome(task, "cancelled", "", 1)]) == (1, 0)
    elif by == "the reaper":
        assert await queue.reap(W, lease_s=0) == (0, 0, 1)
    else:
        assert await queue.release(W) == 0
    assert (await queue.get(first))["state"] == "cancelled"
    assert "unique:" + lock_name("noop", payload_key("p")) not in await keyspace(redis, queue.name)
    assert (await enqueue(queue, "noop", "p", unique=True))[1] == Enqueued.CREATED


async def test_a_lock_left_behind_never_blocks(queue: Queue, redis: Redis) -> None:
    lock = queue.keys.unique_prefix + lock_name("noop", "k")
    ended, _ = await enqueue(queue, "noop", None)
    await redis.hset(queue.keys.task(ended), "state", "succeeded")
    for holder in ("no-such-task", ended):  # its record gone (trimmed, deleted), or ended without freeing it
        await redis.set(lock, holder)
        task_id, fate = await enqueue(queue, "noop", None, unique_key="k")
        assert fate == Enqueued.CREATED and await redis.get(lock) == task_id.encode()
        await queue.cancel(task_id)


async def test_a_requeued_dead_task_takes_its_key_back_only_when_it_is_free(
    queue: Queue, settings: Settings, redis: Redis
) -> None:
    a, _ = await enqueue(queue, "fail", None, unique_key="k", max_retries=0)
    await run_burst(settings, _builtins())
    assert (await queue.get(a))["state"] == "dead"
    assert await queue.dead_requeue([a]) == 1  # the key is free: it is a's again
    assert await enqueue(queue, "fail", None, unique_key="k") == (a, Enqueued.EXISTING)
    await run_burst(settings, _builtins())
    b, fate = await enqueue(queue, "fail", None, unique_key="k", max_retries=0)
    assert fate == Enqueued.CREATED
    assert await queue.dead_requeue([a]) == 1  # b holds the key: a runs all the same, without it
    assert await redis.get(queue.keys.unique_prefix + lock_name("fail", "k")) == b.encode()
    await run_burst(settings, _builtins())  # a ends again: b's lock stays b's until b ends
    assert {(await queue.get(i))["state"] for i in (a, b)} == {"dead"}
    assert (await enqueue(queue, "fail", None, unique_key="k"))[1] == Enqueued.CREATED


async def test_a_types_unique_default_reaches_producers_that_name_the_type(queue: Queue, settings: Settings) -> None:
    registry = Registry()
    registry.add("report", lambda payload: None, defaults=TypeDefaults(unique=True))
    await type_defaults.register([queue], registry)  # what a worker serving the type does at start
    first, _ = await enqueue(queue, "report", {"day": 1})
    assert await enqueue(queue, "report", {"day": 1}) == (first, Enqueued.EXISTING)
    assert (await enqueue(queue, "report", {"day": 2}))[1] == Enqueued.CREATED  # another payload, another key
    assert (await enqueue(queue, "report", {"day": 1}, unique=False))[1] == Enqueued.CREATED  # opted out
    assert await enqueue(queue, "report", {"day": 9}, unique_key=payload_key({"day": 1})) == (
        first, Enqueued.EXISTING)


async def test_idempotency_key_and_unique_together(queue: Queue) -> None:
    first, _ = await enqueue(queue, "noop", 1, unique=True, idempotency_key="i1")
    assert await enqueue(queue, "noop", 1, unique=True, idempotency_key="i1") == (first, Enqueued.REPEATED)
    assert await enqueue(queue, "noop", 1, unique=True, idempotency_key="i2") == (first, Enqueued.EXISTING)
    await queue.cancel(first)
    # i2 was not recorded (no task was created for it): once the key is free it creates one
    assert (await enqueue(queue, "noop", 1, unique=True, idempotency_key="i2"))[1] == Enqueued.CREATED


@pytest.mark.parametrize(("body", "message"), [
    ({"unique": "yes"}, "'unique' must be true or false"),
    ({"unique_key": ""}, "'unique_key' must be a string of 1 to 200 characters"),
    ({"unique_key": 5}, "'unique_key' must be a string of 1 to 200 characters"),
    ({"unique": False, "unique_key": "k"}, "'unique_key' makes a task unique"),
])
async def test_bad_unique_options_are_400s_that_write_nothing(queue: Queue, settings: Settings, redis: Redis,
                                                              body: dict[str, Any], message: str) -> None:
    async with api_client(queue, settings) as client:
        resp = await client.post("/task", json={"type": "noop", **body})
        assert resp.status == 400 and message in (await resp.json())["error"]
    assert await keyspace(redis, queue.name) == {}


def test_reliq_enqueue_unique_prints_the_live_tasks_id(redis_url: str, queue_name: str) -> None:
    first = cli("enqueue", "--queue", queue_name, "noop", '{"a": 1}', "--unique", redis_url=redis_url)
    again = cli("enqueue", "--queue", queue_name, "noop", '{"a": 1}', "--unique", redis_url=redis_url)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout and first.stdout.strip()
    assert "a live task of the same type and unique key stands for it" in again.stderr
    keyed = cli("enqueue", "--queue", queue_name, "noop", "--unique-key", "x", redis_url=redis_url)
    assert keyed.returncode == 0 and keyed.stdout != first.stdout


async def test_unique_hits_and_snoozes_are_counted_in_metrics(queue: Queue, settings: Settings,
                                                             redis: Redis) -> None:
    for _ in range(3):
        await enqueue(queue, "noop", 1, unique=True)
    await redis.hset(queue.keys.stats, "snoozed", 2)
    fam = families(await scrape(queue, settings))
    assert value(fam["reliq_tasks_unique_hits"], "reliq_tasks_unique_hits_total") == 2
    assert value(fam["reliq_tasks_snoozed"], "reliq_tasks_snoozed_total") == 2
