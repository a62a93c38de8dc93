"""Priority within a queue (issue 14 §4): higher first, FIFO within a priority, aging, and
every transition that puts a task back keeping its priority.

Real Redis throughout; a real worker process where what the worker does is the point.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from redis.asyncio import Redis

from reliq import priorities
from reliq.cli import main
from reliq.client import AsyncClient, Client
from reliq.errors import ConfigError, InvalidTask
from reliq.loops import cancel_all
from reliq.monitor import app as monitor
from reliq.priorities import WAKE
from reliq.queue import Claimed, Outcome, Queue
from reliq.scripts import source
from reliq.settings import Settings
from reliq.worker.fetcher import Fetcher
from reliq.worker.nudges import Nudges
from tests import procs
from tests.keyspace import keyspace
from tests.util import api_client, eventually, move_in

W = "w1"


async def ids_in(redis: Redis, key: str) -> list[str]:
    return [i.decode() for i in await redis.lrange(key, 0, -1)]


async def claim_all(queue: Queue, limit: int, worker: str = W) -> list[Claimed]:
    """Claim ``limit`` at a time until nothing is left; every task in claim order."""
    out: list[Claimed] = []
    while got := (await queue.claim(worker, limit))[0]:
        out += got
    return out


def expected_order(tasks: list[tuple[str, int]]) -> list[str]:
    """Higher priority first, enqueue order within one (tasks enqueued in one instant)."""
    return [i for i, _ in sorted(tasks, key=lambda t: -t[1])]  # sorted() is stable: FIFO within


async def enqueue_mixed(queue: Queue, n: int = 40) -> list[tuple[str, int]]:
    levels = [5, 9, 0, 5, 7, 3, 9, 5, 1, 8]
    return [(await queue.enqueue("t", i, priority=levels[i % len(levels)]), levels[i % len(levels)])
            for i in range(n)]


# -- ordering ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 100])
async def test_higher_priority_is_claimed_first_and_fifo_within_a_priority(queue: Queue, limit: int) -> None:
    tasks = await enqueue_mixed(queue)
    claimed = await claim_all(queue, limit)
    assert [t.id for t in claimed] == expected_order(tasks)


async def test_a_task_of_the_default_priority_writes_what_it_did_before_priorities(
        queue: Queue, redis: Redis) -> None:
    a = await queue.enqueue("t", 1)
    b = await queue.enqueue("t", 2, priority=5)
    space = await keyspace(redis, queue.name)
    assert set(space) == {"format", "pending", "task:" + a, "task:" + b, "stats"}  # format: records.lua
    assert space["pending"] == [b, a]
    assert "priority" not in space["task:" + a] and "priority" not in space["task:" + b]
    assert (await queue.get(a))["priority"] == 5


async def test_a_task_of_another_priority_waits_in_its_own_list_and_shows_its_priority(
        queue: Queue, redis: Redis) -> None:
    a = await queue.enqueue("t", 1, priority=9)
    b = await queue.enqueue("t", 2, priority=0)
    space = await keyspace(redis, queue.name)
    assert space["pending:9"] == [a] and space["pending:0"] == [b] and space["priorities"] == "1"
    assert space["pending"] == [WAKE]  # pending was empty: a blocked worker must wake
    assert space["task:" + a]["priority"] == "9"
    assert (await queue.get(a))["priority"] == 9 and (await queue.get(b))["priority"] == 0
    snap = await queue.snapshot()
    assert snap["pending"] == 2  # the mark is no task
    assert snap["pending_by_priority"] == {**dict.fromkeys("9876543210", 0), "9": 1, "0": 1}
    [first, second] = await claim_all(queue, 10)
    assert (first.id, second.id) == (a, b)
    space = await keyspace(redis, queue.name)
    assert not any(k.startswith("pending") for k in space)  # lists and mark gone
    assert "priorities" not in space  # the claim that found nothing left dropped the flag: plain claims again
    assert space["processing:" + W] == [b, a]


async def test_a_batch_enqueue_mixes_priorities_in_one_call(queue: Queue) -> None:
    specs = [{"type": "t", "payload": i, "priority": p} for i, p in enumerate([2, 5, 9, 9, 5, 2])]
    async with AsyncClient(queue.settings.redis_url, queue.name, queue.settings) as client:
        ids = await client.enqueue_many(specs)
    assert [t.id for t in await claim_all(queue, 3)] == [ids[2], ids[3], ids[1], ids[4], ids[0], ids[5]]


# -- aging --------------------------------------------------------------------------------


@pytest.mark.serial
async def test_aging_bounds_how_long_newer_high_priority_tasks_overtake_a_low_one(
        redis: Redis, settings: Settings) -> None:
    """A steady stream of priority-9 tasks, twice what is claimed: a priority-0 task still runs,
    and only tasks enqueued less than the aging bound after it ever went before it."""
    aging = 1.0
    queue = Queue(redis, settings.replace(priority_aging=aging))
    low = ""
    claimed_before: list[str] = []
    deadline = time.monotonic() + 60
    for i in range(1_000_000):
        assert time.monotonic() < deadline, "the priority-0 task never ran"
        await queue.enqueue("t", None, priority=9)
        await queue.enqueue("t", None, priority=9)
        if i == 200:
            low = await queue.enqueue("t", None, priority=0)
        [task], _ = await queue.claim(W, 1)
        await queue.settle(W, [Outcome(task, "ok", "", 0)])
        if task.id == low:
            break
        if low:
            claimed_before.append(task.id)
    fields = await queue.task_fields([low, *claimed_before], ["enqueued_at"])
    t_low = int(fields[0][0] or 0)
    after = [int(f[0] or 0) - t_low for f in fields[1:]]
    assert max(after) > 0, "no task enqueued after the low one overtook it: priorities did nothing"
    assert max(after) <= aging * 1000, "a task enqueued past the aging bound went first"
    assert max(after) > aging * 1000 * 0.8, "the low one ran well before its bound"  # it did wait


async def test_strict_priorities_without_aging_let_a_newer_high_one_go_first_whatever_the_wait(
        redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings.replace(priority_aging=0))
    low = await queue.enqueue("t", None, priority=0)
    await asyncio.sleep(0.05)
    high = await queue.enqueue("t", None, priority=1)
    assert [t.id for t in await claim_all(queue, 1)] == [high, low]
    aged = Queue(redis, settings.replace(priority_aging=0.18))  # 20 ms a step: 50 ms beat one step
    low = await aged.enqueue("t", None, priority=0)
    await asyncio.sleep(0.05)
    high = await aged.enqueue("t", None, priority=1)
    assert [t.id for t in await claim_all(aged, 1)] == [low, high]


# -- what puts a task back keeps its priority -----------------------------------------------


async def test_a_retry_and_a_scheduled_task_come_back_at_their_priority(queue: Queue, redis: Redis) -> None:
    a = await queue.enqueue("t", None, priority=8)
    later = await queue.enqueue("t", None, priority=2, delay=0.05)
    [task], _ = await queue.claim(W, 10)
    await queue.settle(W, [Outcome(task, "error", "boom", 0, retry_delay_ms=1)])
    assert (await queue.get(a))["state"] == "retrying"

    async def both_promoted() -> bool:
        await queue.promote()
        return await redis.llen(queue.keys.priority_list(8)) == 1 and await redis.llen(queue.keys.priority_list(2)) == 1
    await eventually(both_promoted, what="the retry and the scheduled task promoted")
    assert await ids_in(redis, queue.keys.priority_list(8)) == [a]
    assert await ids_in(redis, queue.keys.priority_list(2)) == [later]
    assert [t.id for t in await claim_all(queue, 10)] == [a, later]


async def test_reap_puts_tasks_back_at_the_front_of_their_priority(queue: Queue, redis: Redis) -> None:
    first, second = await queue.enqueue("t", None, priority=7), await queue.enqueue("t", None, priority=7)
    deflt = await queue.enqueue("t", None)
    [got], _ = await queue.claim("dead-worker", 1)
    assert got.id == first
    await redis.zadd(queue.keys.workers, {"dead-worker": 0})  # silent since 1970
    assert await queue.reap("dead-worker", 1.0) == (1, 0, 0)
    assert await ids_in(redis, queue.keys.priority_list(7)) == [second, first]  # first goes first again
    assert await ids_in(redis, queue.keys.pending) == [deflt]
    await redis.hset(queue.keys.task(first), "crashes", 0)  # not a suspect: it may run beside others
    assert [t.id for t in await claim_all(queue, 10)] == [first, second, deflt]


async def test_release_on_drain_puts_tasks_back_at_the_front_of_their_priority(queue: Queue, redis: Redis) -> None:
    first, second = await queue.enqueue("t", None, priority=2), await queue.enqueue("t", None, priority=2)
    deflt = await queue.enqueue("t", None)
    got, _ = await queue.claim("leaving", 2)
    assert [t.id for t in got] == [deflt, first]
    assert await queue.release("leaving") == 2
    assert await ids_in(redis, queue.keys.priority_list(2)) == [second, first]
    assert await ids_in(redis, queue.keys.pending) == [WAKE, deflt]  # pending was empty: an idle worker wakes
    assert (await queue.get(first))["attempts"] == 0  # the released attempt did not count
    assert [t.id for t in await claim_all(queue, 10)] == [deflt, first, second]


async def test_a_dead_task_requeued_goes_back_to_its_priority(queue: Queue, redis: Redis) -> None:
    a = await queue.enqueue("t", None, priority=3, max_retries=0)
    [task], _ = await queue.claim(W, 1)
    await queue.settle(W, [Outcome(task, "error", "boom", 0)])
    assert (await queue.get(a))["state"] == "dead"
    assert await queue.dead_requeue([a]) == 1
    assert await ids_in(redis, queue.keys.priority_list(3)) == [a]
    assert (await queue.get(a))["priority"] == 3


async def test_a_paused_type_holds_tasks_of_every_priority_and_resume_returns_each_to_its_own(
        queue: Queue, redis: Redis) -> None:
    await queue.pause("t", "test")
    held = [await queue.enqueue("t", i, priority=p) for i, p in enumerate([9, 5, 1, 9])]
    other = await queue.enqueue("u", None, priority=4)
    assert [t.id for t in (await queue.claim(W, 10))[0]] == [other]
    assert sorted(await ids_in(redis, queue.keys.held("t"))) == sorted(held)
    snap = await queue.snapshot()
    assert (snap["held"], snap["pending"]) == (4, 4)
    assert await queue.resume("t") == (True, 4)
    assert await ids_in(redis, queue.keys.priority_list(9)) == [held[3], held[0]]
    assert await ids_in(redis, queue.keys.priority_list(1)) == [held[2]]
    assert [i for i in await ids_in(redis, queue.keys.pending) if i != WAKE] == [held[1]]
    assert [t.id for t in await claim_all(queue, 10)] == [held[0], held[3], held[1], held[2]]


async def test_a_whole_queue_paused_hands_a_moved_wake_mark_back_to_no_one(queue: Queue, redis: Redis) -> None:
    await queue.enqueue("t", None, priority=9)
    await queue.pause(None, "test")
    assert await move_in(queue, W) == WAKE
    take = await queue.take(W, 10, WAKE)
    assert take.paused and not take.tasks
    assert await redis.llen(queue.keys.processing(W)) == 0  # the mark went, nothing else moved
    assert (await queue.snapshot())["processing"] == 0


async def test_cancel_takes_a_pending_task_out_of_its_priority_list(queue: Queue, redis: Redis) -> None:
    a, b = await queue.enqueue("t", None, priority=6), await queue.enqueue("t", None, priority=6)
    assert await queue.cancel(a) == "pending"
    assert await ids_in(redis, queue.keys.priority_list(6)) == [b]
    assert [t.id for t in await claim_all(queue, 10)] == [b]


async def test_a_late_success_of_a_requeued_priority_task_counts_once_and_leaves_its_list(
        queue: Queue, redis: Redis) -> None:
    a = await queue.enqueue("t", None, priority=9)
    [task], _ = await queue.claim("slow-worker", 1)
    await redis.zadd(queue.keys.workers, {"slow-worker": 0})  # silent since 1970
    assert await queue.reap("slow-worker", 1.0) == (1, 0, 0)
    assert await queue.settle("slow-worker", [Outcome(task, "ok", "", 0)]) == (1, 0)
    assert await redis.exists(queue.keys.priority_list(9)) == 0
    done = await queue.get(a)
    assert (done["state"], done["priority"]) == ("succeeded", 9)  # the compact record keeps it


async def test_a_succeeded_record_rewritten_compact_keeps_its_priority(queue: Queue) -> None:
    a = await queue.enqueue("t", "x" * 200, priority=2)  # a value past 64 bytes: the record is written anew
    [task], _ = await queue.claim(W, 1)
    await queue.settle(W, [Outcome(task, "ok", "", 0)])
    done = await queue.get(a)
    assert (done["state"], done["payload"], done["priority"]) == ("succeeded", None, 2)


async def test_a_crash_suspect_of_a_priority_runs_alone(queue: Queue, redis: Redis) -> None:
    suspect = await queue.enqueue("t", None, priority=9)
    # As a reap leaves it: a crash follows a claim that counted an attempt, and the claim
    # reads crashes only of a task with attempts > 0 (formats.CLAIM_FIELDS).
    await redis.hset(queue.keys.task(suspect), mapping={"attempts": 1, "crashes": 1})
    others = [await queue.enqueue("t", None) for _ in range(3)]
    got, blocked = await queue.claim(W, 10, elsewhere=1)
    assert (got, blocked) == ([], True)
    got, _ = await queue.claim(W, 10)
    assert [t.id for t in got] == [suspect]
    await queue.settle(W, [Outcome(got[0], "ok", "", 0)])
    assert [t.id for t in await claim_all(queue, 10)] == others


# -- waking an idle worker ---------------------------------------------------------------


async def test_an_idle_worker_wakes_for_a_task_of_another_priority(queue: Queue, redis: Redis) -> None:
    nudges = Nudges([queue], W, lambda _: None)
    listening = asyncio.create_task(nudges.run())
    fetcher = Fetcher([(queue, 1)], W, nudges=nudges)
    try:
        await asyncio.wait_for(nudges.subscribed.wait(), 10)
        nudges.take()  # the subscription's own wake-up
        waiting = asyncio.create_task(fetcher.wait(30, free=10, held=0))
        await asyncio.sleep(0.2)
        task_id = await queue.enqueue("t", None, priority=9)
        got = await asyncio.wait_for(waiting, 10)
        assert [t.id for t in got] == [task_id]
        space = await keyspace(redis, queue.name)
        assert space["processing:" + W] == [task_id]  # the mark is gone from every list
        assert not any(k.startswith("pending") for k in space)
    finally:
        await cancel_all([listening])


async def test_burst_mode_sees_tasks_of_every_priority(queue: Queue) -> None:
    fetcher = Fetcher([(queue, 1)], W)
    assert await fetcher.empty()
    await queue.enqueue("t", None, priority=0)
    assert not await fetcher.empty()


async def test_a_worker_process_runs_mixed_priorities_highest_first(
        queue: Queue, redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "starts.log"
    tasks = [(await queue.enqueue("slow", {"log": str(log)}, priority=p), p) for p in [1, 5, 9, 5, 9, 0, 7, 5]]
    worker = procs.worker(redis_url, queue.name, tmp_path / "w.log", "--app", "tests.apps.pausable",
                          "--concurrency", "1", "--burst")
    try:
        assert worker.wait(60) == 0
    finally:
        procs.stop(worker)
    started = [line.split()[0] for line in log.read_text().splitlines()]
    assert started == expected_order(tasks)
    snap = await queue.snapshot()
    assert (snap["pending"], snap["succeeded"]) == (0, len(tasks))


async def test_a_worker_killed_holding_priority_tasks_is_reaped_and_they_run_at_their_priority(
        queue: Queue, redis_url: str, tmp_path: Path) -> None:
    """SIGKILL: the other worker's reaper puts them back in their priority's list (and a wake
    mark in the empty pending, where that worker waits), and it runs them."""
    log = tmp_path / "starts.log"
    ids = [await queue.enqueue("slow", {"log": str(log), "sleep": 1}, priority=9) for _ in range(2)]
    app = ("--app", "tests.apps.pausable", "--concurrency", "2")
    a = procs.worker(redis_url, queue.name, tmp_path / "a.log", *app)
    try:
        await eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 2, timeout=30,
                         what="both tasks running on the first worker")
        a.send_signal(signal.SIGKILL)
        a.wait()
    finally:
        procs.stop(a)
    b = procs.worker(redis_url, queue.name, tmp_path / "b.log", *app)
    try:
        async def done() -> bool:
            return [(await queue.get(i))["state"] for i in ids] == ["succeeded"] * len(ids)
        await eventually(done, timeout=60, what="the recovered tasks run by the second worker")
    finally:
        procs.stop(b)
    for task_id in ids:
        record = await queue.get(task_id)
        assert (record["priority"], record["crashes"], record["attempts"]) == (9, 1, 2)
    snap = await queue.snapshot()
    assert (snap["recovered"], snap["pending"], snap["succeeded"]) == (2, 0, 2)


# -- bad input ---------------------------------------------------------------------------

BAD = [10, -1, "high", 1.5, True, [5], {"p": 1}]


@pytest.mark.parametrize("value", BAD)
async def test_the_api_refuses_a_bad_priority_with_a_400_and_writes_nothing(
        queue: Queue, settings: Settings, redis: Redis, value: Any) -> None:
    async with api_client(queue, settings) as client:
        resp = await client.post("/task", json={"type": "t", "priority": value})
        assert resp.status == 400, await resp.text()
        assert "'priority' must be an integer from 0 (lowest) to 9 (highest)" in (await resp.json())["error"]
        resp = await client.post("/tasks", json=[{"type": "t"}, {"type": "t", "priority": value}])
        assert resp.status == 400
    assert await keyspace(redis, queue.name) == {}


async def test_the_api_takes_a_priority_and_get_task_shows_it(queue: Queue, settings: Settings) -> None:
    async with api_client(queue, settings) as client:
        resp = await client.post("/task", json={"type": "t", "priority": 8})
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
        resp = await client.post("/tasks", json={"tasks": [{"type": "t", "priority": 2.0}, {"type": "t"}]})
        assert resp.status == 202
        batch = (await resp.json())["task_ids"]
        assert (await (await client.get(f"/task/{task_id}")).json())["priority"] == 8
        assert (await (await client.get(f"/task/{batch[0]}")).json())["priority"] == 2
        assert (await (await client.get(f"/task/{batch[1]}")).json())["priority"] == 5
    assert [t.id for t in await claim_all(queue, 10)] == [task_id, batch[1], batch[0]]


def test_the_clients_and_reliq_enqueue_take_a_priority_and_refuse_a_bad_one(queue: Queue, redis_url: str) -> None:
    with Client(redis_url, queue.name) as client:
        task_id = client.enqueue("t", None, priority=9)
        assert client.get(task_id)["priority"] == 9
        with pytest.raises(InvalidTask, match="'priority' must be"):
            client.enqueue("t", None, priority=10)
    runner = CliRunner()
    result = runner.invoke(main, ["enqueue", "t", "--priority", "7", "--redis-url", redis_url,
                                  "--queue", queue.name])
    assert result.exit_code == 0, result.output
    printed = result.output.strip()
    result = runner.invoke(main, ["task", printed, "--redis-url", redis_url, "--queue", queue.name])
    assert orjson.loads(result.output)["priority"] == 7
    result = runner.invoke(main, ["enqueue", "t", "--priority", "12", "--redis-url", redis_url,
                                  "--queue", queue.name])
    assert result.exit_code == 2 and "'priority' must be an integer from 0" in result.output


async def test_the_async_client_takes_a_priority(queue: Queue) -> None:
    async with AsyncClient(queue.settings.redis_url, queue.name, queue.settings) as client:
        task_id = await client.enqueue("t", None, priority=1)
        assert (await client.get(task_id))["priority"] == 1
        with pytest.raises(InvalidTask):
            await client.enqueue("t", None, priority=-1)


def test_priority_aging_must_be_a_finite_number_of_seconds() -> None:
    assert Settings.load(env={"RELIQ_PRIORITY_AGING": "2.5"}).priority_aging == 2.5
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ConfigError, match="priority_aging"):
            Settings.load(env={"RELIQ_PRIORITY_AGING": bad})


def test_the_scripts_know_the_priorities_as_python_does() -> None:
    lib = source("enqueue")  # a script carries only the helpers it uses (scripts._needed): enqueue all three
    assert f"local DEFAULT_PRIORITY = '{priorities.DEFAULT}'" in lib
    assert f"local WAKE_MARK = '{WAKE}'" in lib
    others = re.search(r"local OTHER_PRIORITIES = \{([^}]*)\}", lib)
    assert others is not None
    assert [int(p.strip(" '")) for p in others.group(1).split(",")] == sorted(priorities.OTHERS, reverse=True)


# -- what the monitor and reliq stats show ----------------------------------------------


async def test_stats_metrics_and_reliq_stats_show_pending_by_priority(
        queue: Queue, settings: Settings, redis_url: str) -> None:
    for priority in (9, 9, 5, 0):
        await queue.enqueue("t", None, priority=priority)
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as client:
        stats = await (await client.get("/stats")).json()
        assert stats["pending"] == 4
        assert stats["pending_by_priority"] == {**dict.fromkeys("9876543210", 0), "9": 2, "5": 1, "0": 1}
        body = await (await client.get("/metrics")).text()
    assert f'reliq_queue_pending_priority{{priority="9",queue="{queue.name}"}} 2.0' in body
    assert f'reliq_queue_pending_priority{{priority="3",queue="{queue.name}"}} 0.0' in body
    args = ["stats", "--redis-url", redis_url, "--queue", queue.name]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)  # it runs a loop of its own
    assert result.exit_code == 0, result.output
    assert re.search(r"pending by priority\W+9: 2, 5: 1, 0: 1", result.output)
