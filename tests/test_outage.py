"""Riding out a Redis outage (reliq/outage.py): the one helper every retrying loop uses.

Outages are injected in-process (tests/flaky.py) except in one test, which stops and
restarts a real private redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from reliq.connection import connect
from reliq.errors import GaveUp
from reliq.loops import every
from reliq.outage import NEVER, Backoff, GiveUp, Outage
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from tests.flaky import Flaky

log = logging.getLogger("tests.outage")


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name and r.levelno == level]


def test_the_wait_between_tries_doubles_from_50ms_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=0.05, cap=1.0)
    for n in range(1, 12):
        full = min(1.0, 0.05 * 2 ** (n - 1))
        assert full / 2 <= backoff.next() <= full, n  # equal jitter: never under half of it
    assert backoff.failures == 11
    backoff.reset()
    assert backoff.next() <= 0.05 and backoff.failures == 1


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_redis_is_back(
    flaky: Flaky, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    queue = Queue(flaky.client, settings)
    task_id = await queue.enqueue("noop")
    outage = Outage("snapshotter", log, give_up=NEVER, cap=0.05)
    flaky.fail_next(6)

    snap = await outage.call(queue.snapshot)

    assert snap["pending"] == 1 and flaky.failed == 6
    assert _lines(caplog, logging.WARNING) == [
        "snapshotter: Redis unreachable: flaky: injected outage; retrying with backoff"]
    assert _lines(caplog, logging.INFO) == ["snapshotter: Redis is back"]
    assert outage.down is None and outage.backoff.failures == 0
    assert (await queue.get(task_id))["state"] == "pending"


async def test_one_outage_over_many_calls_is_one_warning_and_says_what_waits(
    flaky: Flaky, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop keeps its Outage between rounds: the warning names the outage, not each try."""
    caplog.set_level(logging.INFO, logger=log.name)
    queue = Queue(flaky.client, settings)
    outage = Outage("settler", log, give_up=GiveUp(after_s=0.2), cap=0.05)
    flaky.down(OutOfMemoryError("command not allowed when used memory > 'maxmemory'"))
    for _ in range(2):
        with pytest.raises(GaveUp):
            await outage.call(queue.snapshot, note="3 result(s) wait")
    flaky.up()
    await outage.call(queue.snapshot)
    [warning] = _lines(caplog, logging.WARNING)
    assert warning.startswith("settler: Redis is out of memory") and warning.endswith("; 3 result(s) wait")
    assert _lines(caplog, logging.INFO) == ["settler: Redis is back"]


async def test_give_up_after_a_deadline_raises_gave_up_from_the_last_error(flaky: Flaky, settings: Settings) -> None:
    queue = Queue(flaky.client, settings)
    outage = Outage("hand-back", log, give_up=GiveUp(after_s=0.3), cap=0.1)
    flaky.down()
    began = time.monotonic()
    with pytest.raises(GaveUp) as raised:
        await outage.call(queue.snapshot)
    assert time.monotonic() - began >= 0.3
    assert isinstance(raised.value.__cause__, RedisConnectionError)
    assert flaky.failed >= 3  # tried all along, the last try on the deadline


async def test_give_up_when_an_event_is_set_ends_the_wait_between_tries_at_once(
    flaky: Flaky, settings: Settings
) -> None:
    queue = Queue(flaky.client, settings)
    stop = asyncio.Event()
    outage = Outage("worker", log, give_up=GiveUp(when=stop))
    outage.backoff = Backoff(first=60.0, cap=60.0)  # a wait the test would time out on
    flaky.down()
    call = asyncio.create_task(outage.call(queue.snapshot))
    await flaky.until(failed=1)
    stop.set()
    with pytest.raises(GaveUp):
        await asyncio.wait_for(call, 10)
    assert flaky.failed == 1

    flaky.up()  # set before the first try: no try at all
    with pytest.raises(GaveUp) as raised:
        await outage.call(queue.snapshot)
    assert raised.value.__cause__ is None and flaky.started == 1


async def test_a_cancellation_redis_py_turned_into_a_connection_error_is_not_retried(
    flaky: Flaky, settings: Settings
) -> None:
    """The bug docs/architecture.md warns about: a retrying loop must not swallow its cancel."""
    queue = Queue(flaky.client, settings)
    await queue.parts()  # the partition map read first (shared by callers, shielded): then the stall is the snapshot's
    before = flaky.started
    flaky.stall()
    call = asyncio.create_task(Outage("replay", log, give_up=NEVER).call(queue.snapshot))
    await flaky.until(started=before + 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 10)
    assert flaky.started == before + 1 and flaky.failed == 1  # failed as a ConnectionError, not tried again


async def test_other_errors_propagate_at_once_unless_the_loop_must_never_die(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    tries = 0

    async def buggy() -> str:
        nonlocal tries
        tries += 1
        if tries <= 2:
            raise RuntimeError(f"bug {tries}")
        return "ok"

    with pytest.raises(RuntimeError, match="bug 1"):
        await Outage("reaper", log, give_up=NEVER).call(buggy)
    tries = 0
    assert await Outage("settler", log, give_up=NEVER, cap=0.05, retry_other_errors=True).call(buggy) == "ok"
    failures = [r for r in caplog.records if r.name == log.name and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["settler failed; retrying with backoff"] * 2
    assert all(r.exc_info for r in failures)  # a bug keeps its traceback, every time
    assert not _lines(caplog, logging.INFO)  # a bug is not an outage: nothing "is back"


async def test_every_runs_its_step_through_an_outage_and_past_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reliq.loops")
    results = [RedisConnectionError("down"), RedisConnectionError("down"), ValueError("bug"), None, None]
    done = asyncio.Event()

    async def step() -> None:
        result = results.pop(0)
        if not results:
            done.set()
        if result is not None:
            raise result

    loop = asyncio.create_task(every(0.01, step, "promoter", reconnect_cap=0.05))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "reliq.loops"]
    assert messages == [("WARNING", "promoter: Redis unreachable: down; retrying with backoff"),
                        ("ERROR", "promoter failed; trying again in 0.0s"),  # the outage goes on through a bug
                        ("INFO", "promoter: Redis is back")]


async def test_a_real_redis_stopped_and_started_again_is_ridden_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    server = RedisServer(tmp_path / "redis", aof=False).start()
    redis = connect(server.url, socket_timeout=2.0)
    try:
        queue = Queue(redis, Settings(redis_url=server.url, queue="outage"))
        await queue.enqueue("noop")
        server.stop()
        outage = Outage("monitor", log, give_up=NEVER, cap=0.1)
        snapshot = asyncio.create_task(outage.call(queue.snapshot))
        await asyncio.sleep(0.3)  # a few tries against nothing
        assert not snapshot.done() and outage.down is not None
        server.start()
        snap = await asyncio.wait_for(snapshot, 20)
        assert snap["pending"] == 0  # no AOF: the restarted Redis is empty, and answers
        [warning] = _lines(caplog, logging.WARNING)
        assert warning.startswith("monitor: Redis unreachable")
        assert _lines(caplog, logging.INFO) == ["monitor: Redis is back"]
    finally:
        await redis.aclose()
        server.stop()
