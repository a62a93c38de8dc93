"""Cancelling running tasks and their progress, end to end (docs/cancel.md).

In-process workers for what needs a look inside (which path a cancel took, how many
progress writes), real ``reliq work`` processes for the rest: a ``sleep 30`` cancelled,
a child process killed after its grace, a SIGKILLed worker holding a cancelled task.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

import tests.apps.cancellable  # noqa: F401  (registers the types of the in-process workers)
from reliq import cli
from reliq.connection import connect
from reliq.queue import END_STATES, Outcome, Queue
from reliq.registry import REGISTRY, Context, Registry
from reliq.settings import Settings
from reliq.worker import Worker
from reliq.worker.nudges import Nudges
from reliq.worker.reaper import Reaper
from tests import procs
from tests.apps.blocking import runs
from tests.test_isolation import alive
from tests.test_worker import registry_with
from tests.util import eventually, wait_until

APP = ("--app", "tests.apps.cancellable")


@asynccontextmanager
async def worker_running(settings: Settings, registry: Registry = REGISTRY,
                         cls: type[Worker] = Worker, queues: Sequence[str] = ()) -> AsyncIterator[Worker]:
    """An in-process worker on the test's queue (or ``queues``), subscribed; stopped (drained) on the way out."""
    stop = asyncio.Event()
    redis = connect(settings.redis_url)
    worker = cls([(Queue(redis, settings, name), 1) for name in queues or [settings.queue]], settings, registry)
    run = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: worker.nudges.subscribed.is_set() or run.done(), timeout=20, what="worker up")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(run, 60)
        await redis.aclose()


async def state_of(queue: Queue, task_id: str) -> str:
    return (await queue.get(task_id))["state"]


async def until_state(queue: Queue, task_id: str, states: tuple[str, ...] | str, timeout: float = 20) -> float:
    """Wait until the task is in one of ``states``; return how long that took, seconds."""
    wanted = (states,) if isinstance(states, str) else states
    start = time.monotonic()
    await eventually(lambda: _in(queue, task_id, wanted), timeout=timeout, interval=0.005,
                     what=f"task {task_id} {'/'.join(wanted)}")
    return time.monotonic() - start


async def _in(queue: Queue, task_id: str, states: tuple[str, ...]) -> bool:
    return await state_of(queue, task_id) in states


# -- in-process workers -----------------------------------------------------------------


async def test_a_thread_handler_polling_ctx_cancelled_stops_and_ends_cancelled(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs")
    async with worker_running(settings.replace(concurrency=1)) as worker:
        task_id = await queue.enqueue("thread-poll", {"log": log})
        await eventually(lambda: any(m == "S" for m, *_ in runs(log)), timeout=20, what="handler started")
        assert await queue.cancel(task_id) == "processing"
        await until_state(queue, task_id, "cancelled")
        assert [m for m, *_ in runs(log)] == ["S", "C"]  # it saw ctx.cancelled and stopped: never ran again
        after = await queue.enqueue("noop")  # its slot (the only one) is free again
        await until_state(queue, after, "succeeded")
        assert not worker.cancels.asked and task_id not in worker.held
    snap = await queue.snapshot()
    assert (snap["cancelled"], snap["cancelled_running"], snap["retried"], snap["failed"]) == (1, 1, 0, 0)


async def test_an_async_handler_gets_cancelled_error_and_a_missed_message_comes_with_the_heartbeat(
    queue: Queue, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pub/sub nudge lost, the heartbeat's reply still brings the cancel (within one beat)."""
    seen: list[str] = []

    async def patient(payload: Any, ctx: Context) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(f"CancelledError, ctx.cancelled={ctx.cancelled}")
            raise

    deaf: list[str] = []
    monkeypatch.setattr(Nudges, "__init__", _deaf_listener(deaf))
    async with worker_running(settings, registry_with(patient=patient)) as worker:
        task_id = await queue.enqueue("patient")
        await until_state(queue, task_id, "processing")
        await eventually(lambda: task_id in worker.held and bool(worker._running), what="handler running")
        await queue.cancel(task_id)
        took = await until_state(queue, task_id, "cancelled")
    assert seen == ["CancelledError, ctx.cancelled=True"]
    assert deaf == []  # no message reached the worker: the beat brought it
    assert took < settings.heartbeat_interval + 5  # one beat, with room for a loaded machine


def _deaf_listener(heard: list[str]) -> Any:
    """A Nudges.__init__ that subscribes to cancel channels nobody publishes on."""
    original = Nudges.__init__

    def init(self: Nudges, queues: list[Queue], worker_id: str, on_request: Any) -> None:
        original(self, queues, worker_id + ":nobody", heard.append)

    return init


async def test_a_cancel_between_the_handlers_return_and_its_settle_leaves_one_end_state(
    queue: Queue, settings: Settings
) -> None:
    """The race with the task's own end, made deterministic: the cancel lands just before each settle."""

    class CancelsBeforeSettling(Worker):
        async def _settle(self, batch: list[Outcome]) -> int:
            for o in batch:
                assert await self.queues[o.task.queue].cancel(o.task.id) == "processing"  # running, for Redis
            await asyncio.sleep(0.2)  # let the nudge reach this worker: it finds the handler gone
            return await super()._settle(batch)

    async def fine(payload: Any) -> str:
        return "effects done"

    async def broken(payload: Any) -> None:
        raise RuntimeError("it broke")

    settings = settings.replace(max_retries=3)
    async with worker_running(settings, registry_with(fine=fine, broken=broken), CancelsBeforeSettling):
        ok = await queue.enqueue("fine")
        failed = await queue.enqueue("broken")
        await until_state(queue, ok, END_STATES)
        await until_state(queue, failed, END_STATES)
    done, stopped = await queue.get(ok), await queue.get(failed)
    assert (done["state"], done["result"], done["cancel_requested_at"]) == ("succeeded", "effects done", None)
    assert (stopped["state"], stopped["attempts"]) == ("cancelled", 1)  # not retried
    snap = await queue.snapshot()
    assert (snap["succeeded"], snap["cancelled_running"], snap["retried"], snap["delayed"]) == (1, 1, 0, 0)


async def test_a_task_claimed_ahead_and_cancelled_never_starts(queue: Queue, settings: Settings) -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def first(payload: Any) -> None:
        await gate.wait()

    async def second(payload: Any, ctx: Context) -> None:
        started.append(ctx.task_id)

    async with worker_running(settings.replace(concurrency=1), registry_with(first=first, second=second)) as worker:
        a = await queue.enqueue("first")
        await until_state(queue, a, "processing")
        b = await queue.enqueue("second")
        worker._claim_s = worker._run_s  # claim ahead (as with short tasks): b waits in the worker's list
        worker._changed.set()
        await until_state(queue, b, "processing")
        await queue.cancel(b)
        await eventually(lambda: b in worker.cancels.asked, what="cancel heard")
        gate.set()
        await until_state(queue, b, "cancelled")
        await until_state(queue, a, "succeeded")
    assert started == []


async def test_progress_shows_while_running_from_async_and_thread_handlers_written_at_most_once_a_second(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs")
    async with worker_running(settings) as worker:
        fast = await queue.enqueue("async-progress", {"log": log, "n": 200, "s": 2.0})
        thread = await queue.enqueue("thread-poll", {"log": log})
        seen: dict[str, set[float]] = {fast: set(), thread: set()}

        async def reported() -> bool:
            for task_id in seen:
                info = await queue.get(task_id)
                if info["progress"] is not None:
                    assert info["state"] == "processing" and info["progress_at"] and info["progress_message"]
                    seen[task_id].add(info["progress"])
            return all(len(values) >= 2 for values in seen.values())

        start = time.monotonic()
        await eventually(reported, timeout=30, interval=0.05, what="two progress values of each task")
        info = await queue.get(fast)
        assert info["progress_message"] and info["progress_message"].endswith("of 200 rows")
        await queue.cancel(thread)
        await until_state(queue, fast, "succeeded")
        elapsed = time.monotonic() - start
        # ~400 reports a second were made; writes: one a task a second at most (+1 for the first tick)
        assert 2 <= worker.progress.writes <= 2 * (math.ceil(elapsed) + 1), (worker.progress.writes, elapsed)
    done = await queue.get(fast)
    assert done["progress"] is None  # a succeeded record keeps no progress
    assert (await queue.get(thread))["progress"] is not None  # a cancelled one shows how far it got


async def test_bad_progress_values_raise_in_the_handler(queue: Queue, settings: Settings) -> None:
    errors: list[str] = []

    async def sloppy(payload: Any, ctx: Context) -> None:
        for done, message in ((1.5, None), (-0.1, None), (math.nan, None), ("half", None), (True, None),
                              (0.5, 42)):
            try:
                ctx.progress(done, message)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)
        ctx.progress(0.5, "x" * 10_000)  # a long message is cut, not refused

    async with worker_running(settings, registry_with(sloppy=sloppy)) as worker:
        task_id = await queue.enqueue("sloppy")
        await until_state(queue, task_id, "succeeded")
        await worker.progress.run_once()
    assert errors == ["ValueError", "ValueError", "ValueError", "TypeError", "TypeError", "TypeError"]


async def reliq_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """``reliq <args> --queue <the test's>`` through click, in a thread: not to block the worker's loop."""

    def invoke() -> tuple[int, str, str]:
        result = CliRunner().invoke(cli.main, [*args, "--queue", settings.queue],
                                    env={"REDIS_URL": settings.redis_url})
        return result.exit_code, result.stdout, result.stderr

    return await asyncio.to_thread(invoke)


async def test_reliq_task_shows_progress_and_reliq_task_cancel_stops_it(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs")
    async with worker_running(settings):
        task_id = await queue.enqueue("thread-poll", {"log": log})
        await eventually(lambda: _has_progress(queue, task_id), timeout=20, what="progress written")
        code, out, _ = await reliq_cli(settings, "task", task_id)
        shown = orjson.loads(out)
        assert code == 0 and shown["state"] == "processing" and 0 < shown["progress"] <= 1
        assert shown["progress_message"].endswith(" steps") and shown["progress_at"]
        code, out, err = await reliq_cli(settings, "task", "cancel", task_id, "--wait", "30")
        assert (code, orjson.loads(out)["state"]) == (0, "cancelled"), err
        assert "asked to stop it" in err
        code, _, err = await reliq_cli(settings, "task", "cancel", task_id)
        assert code == 1 and "ended already" in err
    waiting = await queue.enqueue("noop", delay=60)
    code, out, _ = await reliq_cli(settings, "task", "cancel", waiting)
    assert (code, orjson.loads(out)) == (0, {"status": "cancelled", "task_id": waiting, "previous_state": "scheduled"})
    code, _, err = await reliq_cli(settings, "task", "cancel", "NOPE")
    assert code == 1 and "no task 'NOPE'" in err


# -- real worker processes --------------------------------------------------------------


def start_worker(settings: Settings, queue: Queue, log: Path, *extra: str) -> Any:
    worker = procs.worker(settings.redis_url, queue.name, log, *APP, *extra)
    wait_until(lambda: "serving" in log.read_text() or worker.poll() is not None, timeout=30, what="worker up")
    assert worker.poll() is None, log.read_text()
    return worker


async def sleeps_running(queue: Queue, n: int) -> list[str]:
    """``n`` tasks ``sleep 30``, once each one runs."""
    ids = [await queue.enqueue("sleep", 30) for _ in range(n)]
    for task_id in ids:
        await until_state(queue, task_id, "processing")
    return ids


@pytest.mark.serial
async def test_a_running_sleep_30_is_cancelled_within_2s_and_its_slot_runs_the_next_task(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    worker = start_worker(settings, queue, tmp_path / "w.log", "--concurrency", "1")
    try:
        [task_id] = await sleeps_running(queue, 1)
        await asyncio.sleep(0.3)  # well inside the handler's sleep
        assert await queue.cancel(task_id) == "processing"
        took = await until_state(queue, task_id, "cancelled", timeout=10)
        assert took < 2.0, took
        nxt = await queue.enqueue("noop")
        await until_state(queue, nxt, "succeeded", timeout=10)
        info = await queue.get(task_id)
        assert (info["attempts"], info["failures"], info["crashes"]) == (1, 0, 0)
        snap = await queue.snapshot()
        assert (snap["cancelled_running"], snap["processing"], snap["retried"]) == (1, 0, 0)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    assert "Traceback" not in (tmp_path / "w.log").read_text()


@pytest.mark.serial
async def test_a_process_handler_sees_ctx_cancelled_and_a_deaf_one_is_killed_after_the_grace(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--concurrency", "2", "--process-pool", "2",
                          "--cancel-grace", "0.5")
    try:
        polite = await queue.enqueue("proc-poll", {"log": log})
        deaf = await queue.enqueue("proc-deaf", {"log": log})
        await eventually(lambda: sorted(m for m, *_ in runs(log)) == ["S", "S"], timeout=30, what="both started")
        pids = {i: pid for _, i, pid, *_ in runs(log)}
        await eventually(lambda: _has_progress(queue, polite), timeout=10, what="progress from the child")
        await queue.cancel(polite)
        await queue.cancel(deaf)
        took_polite = await until_state(queue, polite, "cancelled", timeout=10)
        took_deaf = await until_state(queue, deaf, "cancelled", timeout=15)
        assert took_deaf + 0.05 >= 0.5 and took_deaf < 8, (took_polite, took_deaf)  # killed once the grace was over
        assert [m for m, i, *_ in runs(log) if i == polite] == ["S", "C"]
        assert [m for m, i, *_ in runs(log) if i == deaf] == ["S"]
        assert alive(pids[polite]) and not alive(pids[deaf])  # only the deaf one's child was killed
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


async def _has_progress(queue: Queue, task_id: str) -> bool:
    return (await queue.get(task_id))["progress"] is not None


async def test_a_worker_sigkilled_holding_a_cancelled_task_ends_it_cancelled_not_requeued(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    worker = start_worker(settings, queue, tmp_path / "w.log", "--concurrency", "2")
    try:
        doomed, innocent = await sleeps_running(queue, 2)
        worker.send_signal(signal.SIGSTOP)  # frozen: it cannot act on the cancel
        assert await queue.cancel(doomed) == "processing"
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        procs.stop(worker)
    reaper = Reaper(queue, settings.lease, settings.reap_interval, "test-reaper", 0.5)
    reaped: list[tuple[int, int]] = []

    async def reaped_once() -> bool:
        reaped.append(await reaper.run_once())
        return reaped[-1] != (0, 0)

    await eventually(reaped_once, timeout=30, interval=0.2, what="the dead worker reaped")
    assert reaped[-1] == (1, 0)  # the innocent recovered; the cancelled one not
    assert await state_of(queue, doomed) == "cancelled" and await state_of(queue, innocent) == "pending"
    assert (await queue.get(doomed))["crashes"] == 0  # it ended as asked: no crash is charged
    snap = await queue.snapshot()
    assert (snap["cancelled_running"], snap["recovered"], snap["pending"], snap["processing"]) == (1, 1, 1, 0)
