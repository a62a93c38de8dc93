"""A handler that blocks the event loop: the worker stays alive, says so, and is reaped only when stuck for good.

Real `reliq work` processes; the handlers are in tests/apps/blocking.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from pathlib import Path

import pytest

from reliq.loopwatch import LoopWatch
from reliq.monitor import metrics
from reliq.queue import Queue
from reliq.redis_server import free_port
from reliq.settings import Settings
from reliq.worker.heartbeat import Heartbeat
from tests import procs
from tests.apps.blocking import runs
from tests.util import eventually, wait_until

APP = ("--app", "tests.apps.blocking")


def two_workers(settings: Settings, queue: Queue, tmp_path: Path, *extra: str) -> list[subprocess.Popen[bytes]]:
    return [procs.worker(settings.redis_url, queue.name, tmp_path / f"w{i}.log", *APP, *extra) for i in (1, 2)]


def logs(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.glob("w*.log")))


async def test_async_handler_blocking_25s_with_a_15s_lease_runs_exactly_once_and_succeeds(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    """The issue's reproduction: before, each of two workers reaped the other and the task ran 3 times in 40 s."""
    run_log = str(tmp_path / "runs")
    workers = two_workers(settings, queue, tmp_path, "--lease", "15", "--heartbeat-interval", "2")
    try:
        await eventually(lambda: len(logs(tmp_path).split("serving")) == 3, timeout=20, what="both workers up")
        task_id = await queue.enqueue("block-loop", {"s": 25, "log": run_log})
        await eventually(lambda: _state(queue, task_id, "succeeded"), timeout=60, interval=0.2,
                         what="the blocking task succeeded")
        # The block is reported with the next heartbeat, into the fleet's metrics.
        await eventually(lambda: _blocks(queue, 1), timeout=10, what="the block counted in the metrics hash")
    finally:
        for w in workers:
            procs.stop(w)
    starts = [r for r in runs(run_log) if r[0] == "S"]
    assert [(r[1], r[3]) for r in starts] == [(task_id, 1)], starts  # once, by id and by the handler's own count
    info = await queue.get(task_id)
    assert (info["state"], info["attempts"], info["crashes"], info["result"]) == ("succeeded", 1, 0, "done")
    text = logs(tmp_path)
    # measured between two ticks of the loop watch: 0.1 s of resolution
    assert re.search(rf"event loop blocked for (24\.9|25\.\d)s by task block-loop {task_id}", text), text
    assert "taken for dead" not in text and "was silent" not in text, text
    stats = await queue.snapshot()
    assert (stats["recovered"], stats["succeeded"]) == (0, 1)
    body = (await metrics.render([queue])).decode()
    assert f'reliq_event_loop_blocked_seconds_count{{queue="{queue.name}"}} 1.0' in body, body
    assert f'reliq_event_loop_blocked_seconds_bucket{{le="30.0",queue="{queue.name}"}} 1.0' in body, body


async def test_handler_blocking_past_its_timeout_plus_lease_gets_its_worker_reaped_and_the_task_recovered(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    """A loop stuck for good (here: 1 s timeout + 3 s lease, blocked 12 s) stops beating; the other worker recovers."""
    run_log = str(tmp_path / "runs")
    workers = two_workers(settings, queue, tmp_path, "--lease", "3")  # heartbeat 0.5 s
    try:
        await eventually(lambda: len(logs(tmp_path).split("serving")) == 3, timeout=20, what="both workers up")
        task_id = await queue.enqueue("block-loop", {"s": 12, "log": run_log}, timeout=1)
        await eventually(lambda: _state(queue, task_id, "succeeded"), timeout=30, interval=0.1,
                         what="the task recovered and run by the other worker")
        await eventually(lambda: "taken for dead" in logs(tmp_path), timeout=20,
                         what="the stuck worker, back, knows it was taken for dead")
    finally:
        for w in workers:
            procs.stop(w)
    starts = [r for r in runs(run_log) if r[0] == "S"]
    assert [(r[1], r[3]) for r in starts] == [(task_id, 1), (task_id, 2)], starts
    assert starts[0][2] != starts[1][2]  # the second run is on the other worker
    info = await queue.get(task_id)
    assert (info["state"], info["crashes"], info["result"]) == ("succeeded", 1, "done")
    assert (await queue.snapshot())["recovered"] == 1
    text = logs(tmp_path)
    held = re.search(r"event loop held for (\d+)s", text)  # 4 s, or 5 on a loaded host: the watchdog's tick
    assert held and int(held[1]) >= 4 and "plus the lease (4s)" in text, text
    assert "event loop held for" in text and f"by task block-loop {task_id}" in text, text
    assert "heartbeat stopped" in text and "requeued 1 task(s)" in text, text


async def test_a_short_block_under_the_threshold_is_not_reported() -> None:
    watch = LoopWatch(threshold=0.3, culprit_of=lambda task: ("", "test"), tick=0.02)
    ticker = asyncio.create_task(watch.run(lambda: 99.0))
    await asyncio.sleep(0.05)
    time.sleep(0.1)  # noqa: ASYNC251
    await asyncio.sleep(0.05)
    assert watch.blocks == 0
    time.sleep(0.4)  # noqa: ASYNC251
    await asyncio.sleep(0.05)
    ticker.cancel()
    assert watch.blocks == 1 and 0.35 < watch.blocked_s < 1.0
    assert watch.take_counts("q", first=True)["lbs"] >= 350


async def _state(queue: Queue, task_id: str, wanted: str) -> bool:
    return (await queue.get(task_id))["state"] == wanted


async def _blocks(queue: Queue, n: int) -> bool:
    return metrics.parse_loop_blocks(await queue.metric_counts()).count >= n


def test_the_heartbeat_thread_rides_out_redis_errors_logging_once_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on the port: the thread warns once, backs off, keeps trying, and stops when told."""
    caplog.set_level(logging.INFO, logger="reliq.worker.heartbeat")
    heartbeat = Heartbeat(f"redis://127.0.0.1:{free_port()}/0", ["q"], "w1", interval=0.1, lease=2.0,
                          status=dict)
    heartbeat.start()
    try:
        wait_until(lambda: heartbeat.failures >= 3, timeout=10, what="several failed beats")
    finally:
        heartbeat.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "heartbeat: Redis unreachable" in warnings[0].getMessage(), warnings
    assert warnings[0].exc_info is None
