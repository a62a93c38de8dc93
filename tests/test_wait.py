"""Waiting for a task to end: the scripts' marks and wake-ups, the long poll, both clients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

import reliq.api
import reliq.builtins  # registers the built-in types
from reliq import AsyncClient, Client, TaskNotFound
from reliq.connection import connect
from reliq.errors import TooManyWaiters
from reliq.openapi import spec as openapi_spec
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.waiting import Waiters
from reliq.worker import Worker
from tests import procs
from tests.flaky import Flaky
from tests.keyspace import keyspace
from tests.test_client import in_child
from tests.test_scripts import claim_all, enqueue, outcome
from tests.util import api_client, eventually

W = "w1"


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with api_client(queue, settings) as client:
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(settings.redis_url, settings.queue, settings) as c:
        yield c


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """An in-process worker on the test's queue, stopped (drained) on the way out."""
    stop = asyncio.Event()
    redis = connect(settings.redis_url)
    worker = asyncio.create_task(Worker(Queue(redis, settings), settings).run(stop))
    try:
        yield
    finally:
        stop.set()
        await worker
        await redis.aclose()


# -- the scripts ---------------------------------------------------------------------------


async def test_tasks_nobody_waits_for_leave_no_waiting_keys(queue: Queue, redis: Redis) -> None:
    await enqueue(queue, 2)
    ta, tb = await claim_all(queue)
    await queue.settle(W, [outcome(ta), outcome(tb, "permanent", "no")])
    space = await keyspace(redis, queue.name)
    assert not [k for k in space if k.startswith(("waiters", "wake:"))], space


async def test_a_task_that_ends_between_the_check_and_the_block_is_not_missed(
    queue: Queue, redis: Redis
) -> None:
    [a] = await enqueue(queue)
    assert await queue.watch(a, "hub1", 60_000) == "pending"
    assert await queue.watch(a, "hub2", 60_000) == "pending"
    assert await queue.watch(a, "hub1", 60_000) == "pending"  # a hub is listed once
    assert (await keyspace(redis, queue.name))["waiters"] == {a: "hub1 hub2"}
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task, "ok", '"done"')])
    # nobody was blocking yet: the wake-up waits in each hub's list
    space = await keyspace(redis, queue.name)
    assert (space["wake:hub1"], space["wake:hub2"], "waiters" in space) == ([a], [a], False)
    assert 0 < await redis.pttl(queue.keys.wake("hub1")) <= 60_000
    assert await redis.blpop([queue.keys.wake("hub1")], 1) == (queue.keys.wake("hub1").encode(), a.encode())


async def test_watch_reports_an_ended_or_unknown_task_and_marks_nothing(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task)])
    assert await queue.watch(a, "hub", 60_000) == "succeeded"
    assert await queue.watch("nope", "hub", 60_000) == ""
    assert "waiters" not in await keyspace(redis, queue.name)


async def test_unwatch_takes_only_its_hub_out_of_the_mark(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    await queue.watch(a, "hub1", 60_000)
    await queue.watch(a, "hub2", 60_000)
    await queue.unwatch(a, "hub1")
    assert (await keyspace(redis, queue.name))["waiters"] == {a: "hub2"}
    await queue.unwatch(a, "hub2")
    assert "waiters" not in await keyspace(redis, queue.name)


async def test_dead_letter_cancel_and_crash_quarantine_wake_their_waiters(
    queue: Queue, redis: Redis, settings: Settings
) -> None:
    [dead, cancelled, crashed] = await enqueue(queue, 3, max_retries=0)
    [retried] = await enqueue(queue, 1, max_retries=1)  # (the claim reads it from the record's opts)
    for task_id in (dead, cancelled, crashed, retried):
        await queue.watch(task_id, "hub", 60_000)
    await queue.cancel(cancelled)
    tasks = {t.id: t for t in await claim_all(queue)}
    await queue.settle(W, [outcome(tasks[dead], "error", "boom"),
                           outcome(tasks[retried], "error", "again", delay_ms=60_000)])
    # a worker that dies alone with a task past its crash limit: quarantined
    await redis.hset(queue.keys.task(crashed), "crashes", settings.crash_limit - 1)
    await redis.delete(queue.keys.processing(W))
    await redis.lpush(queue.keys.processing("w2"), crashed)
    assert await queue.reap("w2", lease_s=0) == (0, 1, 0)
    space = await keyspace(redis, queue.name)
    assert sorted(space["wake:hub"]) == sorted([dead, cancelled, crashed])  # a retry has not ended
    assert space["waiters"] == {retried: "hub"}


# -- the long poll ---------------------------------------------------------------------------


async def test_long_poll_answers_as_soon_as_a_real_worker_finishes(
    http: TestClient, settings: Settings, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    worker = procs.worker(settings.redis_url, settings.queue, tmp_path / "worker.log")
    try:
        redis = connect(settings.redis_url)
        await eventually(lambda: redis.zcard(Queue(redis, settings).keys.workers), what="worker registered")
        await redis.aclose()
        task_id = (await (await http.post("/task", json={"type": "sleep", "payload": 0.3})).json())["task_id"]
        start = time.monotonic()
        response = await http.get(f"/task/{task_id}", params={"wait": "30"})
        elapsed = time.monotonic() - start
        body = await response.json()
        assert (response.status, body["state"]) == (200, "succeeded")
        assert elapsed < 5, f"answered after {elapsed:.1f}s of a 30s wait"
    finally:
        procs.stop(worker)


async def test_long_poll_returns_the_current_record_when_the_wait_runs_out(http: TestClient) -> None:  # type: ignore[type-arg]
    task_id = (await (await http.post("/task", json={"type": "noop"})).json())["task_id"]
    start = time.monotonic()
    response = await http.get(f"/task/{task_id}", params={"wait": "0.5"})
    assert (response.status, (await response.json())["state"]) == (200, "pending")
    assert 0.5 <= time.monotonic() - start < 3


@pytest.mark.parametrize("wait", ["-1", "60.5", "abc", "nan", "inf"])
async def test_long_poll_refuses_a_wait_outside_0_to_60_seconds(http: TestClient, wait: str) -> None:  # type: ignore[type-arg]
    task_id = (await (await http.post("/task", json={"type": "noop"})).json())["task_id"]
    response = await http.get(f"/task/{task_id}", params={"wait": wait})
    assert response.status == 400
    assert "'wait' must be a number of seconds from 0 to 60" in (await response.json())["error"]


async def test_long_poll_on_an_unknown_task_is_404_at_once(http: TestClient) -> None:  # type: ignore[type-arg]
    start = time.monotonic()
    response = await http.get("/task/nope", params={"wait": "30"})
    assert response.status == 404
    assert time.monotonic() - start < 2


async def test_many_long_polls_share_one_blocking_connection_and_all_wake(
    http: TestClient, queue: Queue, redis: Redis  # type: ignore[type-arg]
) -> None:
    ids = await enqueue(queue, 50, delay=60)
    polls = [asyncio.create_task(http.get(f"/task/{i}", params={"wait": "30"})) for i in ids]

    async def blocked() -> int:
        clients = await redis.client_list()
        return sum(1 for c in clients if c["cmd"] == "blpop" and "b" in c["flags"])

    await eventually(lambda: len(http.app[reliq.api.PRODUCER].waiters._local) == 50, what="50 waiting")
    async def one_blocked() -> bool:
        return await blocked() == 1

    await eventually(one_blocked, what="one blocking connection")
    start = time.monotonic()
    for i in ids:
        await queue.cancel(i)
    answers = [await (await p).json() for p in polls]
    assert time.monotonic() - start < 5
    assert {(a["task_id"], a["state"]) for a in answers} == {(i, "cancelled") for i in ids}


async def test_long_polls_past_max_waiters_get_429(queue: Queue, settings: Settings) -> None:
    one = settings.replace(max_waiters=1)
    async with api_client(Queue(queue.redis, one), one) as http:
        [a, b] = await enqueue(queue, 2, delay=60)
        first = asyncio.create_task(http.get(f"/task/{a}", params={"wait": "30"}))
        await eventually(lambda: http.app[reliq.api.PRODUCER].waiters.waiting == 1, what="one waiting")
        refused = await http.get(f"/task/{b}", params={"wait": "30"})
        assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
        await queue.cancel(a)
        assert (await (await first).json())["state"] == "cancelled"


async def test_long_poll_whose_client_goes_away_holds_no_connection(
    http: TestClient, queue: Queue, redis: Redis  # type: ignore[type-arg]
) -> None:
    [a] = await enqueue(queue, delay=60)
    waiters = http.app[reliq.api.PRODUCER].waiters
    poll = asyncio.create_task(http.get(f"/task/{a}", params={"wait": "1"}))
    await eventually(lambda: waiters.waiting == 1, what="waiting")
    poll.cancel()  # the HTTP client hangs up
    await eventually(lambda: waiters.waiting == 0, timeout=5, what="the wait ended at its deadline")
    await eventually(lambda: not waiters._dispatchers, timeout=10, what="the idle dispatcher ended")
    assert "waiters" not in await keyspace(redis, queue.name)  # its mark went with it


# -- the clients -------------------------------------------------------------------------


async def test_async_client_wait_returns_when_the_worker_finishes(client: AsyncClient, settings: Settings) -> None:
    ok = await client.enqueue("email-notification", {"to": "a@b.co"})
    dead = await client.enqueue("fail", 1, max_retries=0)
    async with running_worker(settings):
        done = await asyncio.gather(client.wait(ok, 30), client.wait(dead, 30), client.wait(ok, 30))
    assert [(d["state"], d["result"]) for d in done] == [("succeeded", {"sent_to": "a@b.co"}), ("dead", None),
                                                          ("succeeded", {"sent_to": "a@b.co"})]
    assert "RuntimeError" in (done[1]["last_error"] or "")


async def test_wait_on_a_task_that_already_ended_returns_at_once(client: AsyncClient, queue: Queue) -> None:
    task_id = await client.enqueue("noop", queue=queue.name)
    await client.cancel(task_id)
    start = time.monotonic()
    assert (await client.wait(task_id, 30))["state"] == "cancelled"
    assert time.monotonic() - start < 1


async def test_wait_for_an_unknown_task_raises_task_not_found(client: AsyncClient) -> None:
    with pytest.raises(TaskNotFound):
        await client.wait("nope", 30)


async def test_cancelling_a_waited_task_wakes_the_waiter(client: AsyncClient) -> None:
    task_id = await client.enqueue("noop", delay=60)
    waiting = asyncio.create_task(client.wait(task_id))  # no timeout: as long as it takes
    await eventually(lambda: client._waiters.waiting == 1, what="waiting")
    start = time.monotonic()
    await client.cancel(task_id)
    assert (await asyncio.wait_for(waiting, 5))["state"] == "cancelled"
    assert time.monotonic() - start < 2


async def test_waiters_refuse_past_their_limit(queue: Queue) -> None:
    waiters = Waiters(queue.settings.redis_url, max_waiters=0)
    [a] = await enqueue(queue)
    with pytest.raises(TooManyWaiters):
        await waiters.wait(queue, a, 1)
    await waiters.close()


async def test_sync_client_wait(settings: Settings) -> None:
    with Client(settings.redis_url, settings.queue, settings) as sync:
        task_id = sync.enqueue("email-notification", {"to": "a@b.co"})
        assert sync.wait(task_id, 0.2)["state"] == "pending"  # no worker yet: the wait runs out
        async with running_worker(settings):
            info = await asyncio.to_thread(sync.wait, task_id, 30)
    assert (info["state"], info["result"]) == ("succeeded", {"sent_to": "a@b.co"})


async def test_sync_client_waits_in_threads_are_woken_by_a_cancel(settings: Settings, redis: Redis) -> None:
    with Client(settings.redis_url, settings.queue, settings) as sync:
        ids = [sync.enqueue("noop", delay=60) for _ in range(4)]
        waits = [asyncio.create_task(asyncio.to_thread(sync.wait, i, 30)) for i in ids]
        await eventually(lambda: _all_marked(redis, settings, ids), what="all four marked")
        start = time.monotonic()
        for i in ids:
            sync.cancel(i)
        done = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert time.monotonic() - start < 3
        assert [(d["task_id"], d["state"]) for d in done] == [(i, "cancelled") for i in ids]
        with pytest.raises(TaskNotFound):
            sync.wait("nope", 5)


async def _all_marked(redis: Redis, settings: Settings, ids: list[str]) -> bool:
    return await redis.hlen(Queue(redis, settings).keys.waiters) == len(ids)


def test_a_forked_child_waits_on_blocking_connections_of_its_own(settings: Settings) -> None:
    client = Client(settings.redis_url, settings.queue, settings)
    task_id = client.enqueue("noop", delay=60)
    assert client.wait(task_id, 0.1)["state"] == "scheduled"  # the parent's blocking client is open now

    def child() -> str:
        assert client.wait(task_id, 0.1)["state"] == "scheduled"
        client.cancel(task_id)
        return client.wait(task_id, 5)["state"]

    assert in_child(child) == "cancelled"
    assert client.wait(task_id, 5)["state"] == "cancelled"  # and the parent's still works
    client.close()


def test_openapi_describes_the_wait_parameter_and_its_limit() -> None:
    get = openapi_spec()["paths"]["/task/{id}"]["get"]
    [wait] = [p for p in get["parameters"] if p["name"] == "wait"]
    assert (wait["in"], wait["schema"]["minimum"], wait["schema"]["maximum"]) == ("query", 0, 60)
    assert {"400", "404", "429"} <= set(get["responses"])


async def test_a_wait_rides_out_an_outage_of_the_blocking_connection_and_is_still_woken(
    queue: Queue, flaky: Flaky, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.waiting")
    [a] = await enqueue(queue)
    waiters = Waiters(queue.settings.redis_url)
    waiters._blocking = flaky.client  # the connection the wake-up dispatcher blocks on
    flaky.fail_next(3)
    try:
        wait = asyncio.create_task(waiters.wait(queue, a, timeout=30))
        await flaky.until(failed=3)
        [task] = await claim_all(queue)
        await queue.settle(W, [outcome(task, "ok", '"done"')])
        assert (await asyncio.wait_for(wait, 5))["state"] == "succeeded"  # woken, not found by the 10 s re-check
    finally:
        await waiters.close()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "reliq.waiting"]
    assert lines == [
        ("WARNING", f"waiting for tasks of {queue.name!r}: Redis unreachable: flaky: injected outage; "
                    "retrying with backoff"),
        ("INFO", f"waiting for tasks of {queue.name!r}: Redis is back")]
