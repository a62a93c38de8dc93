"""The worker's background loops as units: one round through ``run_once()`` against real
Redis, and each loop riding out a Redis outage injected in-process (tests/flaky.py): the
promoter, reaper, heartbeat, fetcher, settler, periodic enqueuer and succeeded trimmer.

The reaper's rounds, the lock and the grace after a real Redis stall are in
tests/test_reaper.py; here its loop meets an outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from reliq.keys import QueueKeys
from reliq.loops import cancel_all
from reliq.queue import Queue, text
from reliq.schedules import Declared, make_schedule, slot_id, slot_of
from reliq.settings import Settings
from reliq.worker.heartbeat import Heartbeat
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer
from reliq.worker.promoter import Promoter
from reliq.worker.reaper import Reaper
from reliq.worker.succeeded_trimmer import SucceededTrimmer
from reliq.worker.worker import Worker
from tests.flaky import Flaky
from tests.util import eventually, held_by


def _outage_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == logger]


async def _pending(redis: Redis, queue: Queue) -> list[str]:
    return sorted(text(i) for i in await redis.lrange(queue.keys.pending, 0, -1))


# -- promoter ----------------------------------------------------------------------------


async def test_a_promoter_round_moves_exactly_the_tasks_that_are_due(queue: Queue) -> None:
    later = sorted([await queue.enqueue("noop", delay=60) for _ in range(3)])
    promoter = Promoter(queue, 0.02)
    assert await promoter.run_once() == 0
    due = later[:2]
    await queue.redis.zadd(queue.keys.delayed, dict.fromkeys(due, 0))  # their time has come

    assert await promoter.run_once() == 2
    assert await _pending(queue.redis, queue) == due
    assert [(await queue.get(i))["state"] for i in later] == ["pending", "pending", "scheduled"]
    assert await promoter.run_once() == 0


async def test_a_promoter_round_takes_every_due_task_however_many_calls_it_needs(queue: Queue) -> None:
    ids = sorted([await queue.enqueue("noop", delay=60) for _ in range(5)])
    await queue.redis.zadd(queue.keys.delayed, dict.fromkeys(ids, 0))
    assert await queue.promote(limit=2) == 5  # three script calls of at most two
    assert await _pending(queue.redis, queue) == ids


async def test_the_promoter_loop_rides_out_an_outage_and_then_promotes_what_fell_due(
    flaky: Flaky, redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.loops")
    queue = Queue(flaky.client, settings)
    ids = sorted([await queue.enqueue("noop", delay=60) for _ in range(2)])
    promoter = Promoter(queue, 0.01)
    assert await promoter.run_once() == 0  # the script is loaded: from now on one call a round
    flaky.down()
    loop = asyncio.create_task(promoter.run())
    try:
        await flaky.until(failed=3)
        await redis.zadd(queue.keys.delayed, dict.fromkeys(ids, 0))  # fell due during the outage
        passed = flaky.passed
        flaky.up()
        await flaky.until(passed=passed + 1)  # the first round after the outage
        assert await _pending(redis, queue) == ids
    finally:
        await cancel_all([loop])
    assert _outage_lines(caplog, "reliq.loops") == [
        ("WARNING", "promoter: Redis unreachable: flaky: injected outage; retrying with backoff"),
        ("INFO", "promoter: Redis is back")]


# -- reaper ------------------------------------------------------------------------------


async def test_the_reaper_loop_rides_out_an_outage_and_then_reaps_the_dead_worker(
    flaky: Flaky, queue: Queue, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.loops")
    task_id = await held_by(queue, "w-dead")
    await queue.redis.zadd(queue.keys.workers, {"w-dead": 0})  # silent since 1970
    flaky.fail_next(4)
    reaper = Reaper(Queue(flaky.client, settings), lease=1.0, interval=0.02, owner="w-reaper", grace=1.0)
    loop = asyncio.create_task(reaper.run())
    try:
        await eventually(lambda: _state_is(queue, task_id, "pending"), what="the dead worker's task requeued")
        # "back" is logged when the call that requeued it returns: just after the task is pending
        await eventually(lambda: len(_outage_lines(caplog, "reliq.loops")) == 2, what="Redis back logged")
    finally:
        await cancel_all([loop])
    record = await queue.get(task_id)
    assert record["crashes"] == 1 and flaky.failed == 4
    assert await queue.redis.zscore(queue.keys.workers, "w-dead") is None
    assert await _pending(queue.redis, queue) == [task_id]
    assert _outage_lines(caplog, "reliq.loops") == [
        ("WARNING", "reaper: Redis unreachable: flaky: injected outage; retrying with backoff"),
        ("INFO", "reaper: Redis is back")]


async def _state_is(queue: Queue, task_id: str, state: str) -> bool:
    return (await queue.get(task_id))["state"] == state


# -- heartbeat ---------------------------------------------------------------------------


def _heartbeat(settings: Settings, queues: list[str], interval: float = 0.5) -> Heartbeat:
    return Heartbeat(settings.redis_url, queues, "w-beat", interval, settings.lease,
                     status=lambda: {"in_flight": 3, "queues": ",".join(queues)})


async def test_a_beat_registers_the_worker_with_its_info_in_every_queue(queue: Queue, settings: Settings) -> None:
    other = Queue(queue.redis, settings, name=queue.name + "-b")
    heartbeat = _heartbeat(settings, [queue.name, other.name])
    try:
        assert await asyncio.to_thread(heartbeat.run_once)  # the first beat registers it
    finally:
        heartbeat.stop()
    for q in (queue, other):
        now, [(worker_id, beat, info)] = await q.workers_info()
        assert worker_id == "w-beat" and 0 <= now - beat < 5000  # on the Redis clock
        assert info["in_flight"] == "3" and info["pid"] == str(os.getpid()) and info["queues"] == \
            f"{queue.name},{other.name}"
        assert 0 < await q.redis.pttl(QueueKeys(q.name).worker_info("w-beat")) <= settings.lease * 2 * 1000


async def test_a_beat_tells_when_the_worker_was_taken_for_dead_in_any_of_its_queues(
    queue: Queue, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    other = Queue(queue.redis, settings, name=queue.name + "-b")
    heartbeat = _heartbeat(settings, [queue.name, other.name])
    try:
        assert await asyncio.to_thread(heartbeat.run_once)
        assert await asyncio.to_thread(heartbeat.run_once)  # still registered
        await other.redis.zrem(other.keys.workers, "w-beat")  # a reaper of the second queue took it for dead
        assert not await asyncio.to_thread(heartbeat.run_once)
        assert "w-beat was silent past its 2s lease and taken for dead" in caplog.text
        assert await asyncio.to_thread(heartbeat.run_once)  # registered again by that beat
    finally:
        heartbeat.stop()
    assert heartbeat.beats == 4 and heartbeat.failures == 0


class _FailingScripts:
    """Stands in for a heartbeat's scripts: the next ``n`` calls fail, then it signals the first success."""

    def __init__(self, scripts: Any, n: int) -> None:
        self.scripts, self.left = scripts, n
        self.back = threading.Event()

    def __call__(self, *args: Any) -> Any:
        if self.left:
            self.left -= 1
            raise RedisConnectionError("flaky: injected outage")
        result = self.scripts(*args)
        self.back.set()
        return result


async def test_the_heartbeat_thread_rides_out_an_outage_logging_it_once_and_its_end(
    queue: Queue, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.worker.heartbeat")
    heartbeat = _heartbeat(settings, [queue.name], interval=0.02)
    await asyncio.to_thread(heartbeat.run_once)
    failing = heartbeat._scripts = _FailingScripts(heartbeat._scripts, 4)
    await queue.redis.zadd(queue.keys.workers, {"w-beat": 0})  # its last beat long ago
    heartbeat.start()
    try:
        assert await asyncio.to_thread(failing.back.wait, 10), "no beat landed after the outage"
    finally:
        heartbeat.stop()
    assert heartbeat.failures == 4
    _, [(_, beat, _)] = await queue.workers_info()
    assert beat > 0  # the beat after the outage landed
    assert _outage_lines(caplog, "reliq.worker.heartbeat") == [
        ("WARNING", "heartbeat: Redis unreachable: flaky: injected outage; retrying with backoff"),
        ("INFO", "heartbeat: Redis is back")]


# -- the worker's fetcher and settler ----------------------------------------------------


@pytest.mark.parametrize(("loop", "script"), [("fetcher", "claim"), ("settler", "settle")])
async def test_the_fetcher_and_the_settler_ride_out_an_outage_and_every_task_runs_once(
    loop: str, script: str, flaky: Flaky, queue: Queue, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.worker.worker")
    ids = [await queue.enqueue("noop", i) for i in range(20)]
    flaky.fail_next(3, script=script)
    assert await asyncio.wait_for(Worker(Queue(flaky.client, settings), settings, burst=True).run(), 30)
    assert flaky.failed == 3
    for task_id in ids:
        record = await queue.get(task_id)
        assert (record["state"], record["attempts"]) == ("succeeded", 1), task_id
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name == "reliq.worker.worker" and r.getMessage().startswith(loop)]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert lines[0][1].startswith(f"{loop}: Redis unreachable: flaky: injected outage; ")
    assert lines[1][1] == f"{loop}: Redis is back"


# -- periodic enqueuer, trimmers ---------------------------------------------------------


async def test_the_periodic_enqueuer_rides_out_an_outage_between_a_decision_and_its_mark_and_enqueues_each_slot_once(
    flaky: Flaky, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.loops")
    enqueuer = PeriodicEnqueuer(Queue(flaky.client, queue.settings),
                                [Declared(make_schedule("tick", type="noop", every=1), None)], poll_s=0.05)
    await enqueuer.declare()
    sec, usec = await queue.redis.time()
    upto = int(sec) * 1000 + int(usec) // 1000 - 3_500
    await queue.redis.hset(queue.keys.schedule("tick"), "upto", upto)
    # the decision is recorded and its tasks enqueued; the mark that frees the schedule fails
    flaky.fail_next(2, script="schedule_enqueued")
    loop = asyncio.create_task(enqueuer.run())
    try:
        await flaky.until(failed=2)
        await eventually(lambda: _marked(queue, "tick"), what="the decision marked once Redis is back")
        await eventually(lambda: _said(caplog, "periodic enqueuer: Redis is back"), what="the round after it ended")
    finally:
        await cancel_all([loop])
    pending = await _pending(queue.redis, queue)
    first = (upto // 1000 + 1) * 1000
    due = [slot_id("tick", s) for s in range(first, first + 3_000, 1000)]
    assert set(due) <= set(pending) and len(pending) == len(set(pending))  # each slot once, the first three at least
    assert all(slot_of(i) is not None for i in pending)
    assert _outage_lines(caplog, "reliq.loops") == [
        ("WARNING", "periodic enqueuer: Redis unreachable: flaky: injected outage; retrying with backoff"),
        ("INFO", "periodic enqueuer: Redis is back")]


def _said(caplog: pytest.LogCaptureFixture, line: str) -> bool:
    return any(r.getMessage() == line for r in caplog.records)


async def _marked(queue: Queue, name: str) -> bool:
    return not await queue.redis.hexists(queue.keys.schedule(name), "firing")


async def test_the_succeeded_trimmer_rides_out_an_outage_and_then_trims_what_aged(
    flaky: Flaky, redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reliq.loops")
    queue = Queue(redis, settings.replace(result_ttl=0.2))
    ids = [await queue.enqueue("noop", i) for i in range(3)]
    await Worker(queue, queue.settings, burst=True).run()
    await asyncio.sleep(0.3)  # past their age, and nothing settles to trim them
    flaky.fail_next(3)
    loop = asyncio.create_task(SucceededTrimmer(Queue(flaky.client, queue.settings), {}, 0.02).run())
    try:
        await eventually(lambda: _gone(redis, queue, ids), what="the aged records trimmed")
    finally:
        await cancel_all([loop])
    assert flaky.failed == 3 and (await queue.snapshot())["expired"] == 3
    assert _outage_lines(caplog, "reliq.loops") == [
        ("WARNING", "succeeded-record trimmer: Redis unreachable: flaky: injected outage; retrying with backoff"),
        ("INFO", "succeeded-record trimmer: Redis is back")]


async def _gone(redis: Redis, queue: Queue, ids: list[str]) -> bool:
    return not any([await redis.exists(queue.keys.task(i)) for i in ids])
