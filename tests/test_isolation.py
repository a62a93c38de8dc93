"""Handlers that overrun their timeout never overlap their retry: killed children, held threads.

Real `reliq work` processes; the handlers are in tests/apps/blocking.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from reliq.queue import Queue
from reliq.settings import Settings
from tests import procs
from tests.apps.blocking import runs
from tests.util import eventually, wait_until

APP = ("--app", "tests.apps.blocking")


def start_worker(settings: Settings, queue: Queue, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    worker = procs.worker(settings.redis_url, queue.name, log, *APP, "--retry-base", "0.05", *extra)
    wait_until(lambda: "serving" in log.read_text() or worker.poll() is not None, timeout=20, what="worker up")
    return worker


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc), the fork server and the children included."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = {int(k) for k in f.read().split()}
                todo += kids - found
                found |= kids
        except FileNotFoundError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_process_handler_running_forever_is_killed_at_its_timeout_and_its_retry_runs_in_a_fresh_child(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--process-pool", "1")
    try:
        task_id = await queue.enqueue("proc-forever", {"log": run_log}, timeout=1, max_retries=1)
        await eventually(lambda: _state(queue, task_id, "dead"), timeout=30, what="dead after two timeouts")
        assert worker.poll() is None  # the worker lives on
    finally:
        procs.stop(worker)
    lines = runs(run_log)
    starts = [r for r in lines if r[0] == "S"]
    assert [(r[1], r[3]) for r in starts] == [(task_id, 1), (task_id, 2)], lines
    assert starts[0][2] != starts[1][2]  # a fresh child for the retry
    assert [r for r in lines if r[0] == "L"] == []  # the first child was gone when the retry started
    assert not alive(starts[0][2]) and not alive(starts[1][2])
    info = await queue.get(task_id)
    assert (info["state"], info["reason"], info["attempts"]) == ("dead", "timeout", 2)
    text = (tmp_path / "w.log").read_text()
    assert f"killing child process {starts[0][2]} running task proc-forever {task_id}" in text, text


async def test_cpu_bound_process_handlers_run_in_parallel_in_separate_children(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--process-pool", "2")
    try:
        ids = [await queue.enqueue("proc-cpu", {"log": run_log, "s": 1.5}) for _ in range(2)]
        await eventually(lambda: _all(queue, ids, "succeeded"), timeout=30, what="both CPU tasks done")
    finally:
        procs.stop(worker)
    lines = runs(run_log)
    spans = {i: [t for m, j, _, _, t in lines if j == i] for i in ids}
    (s1, e1), (s2, e2) = spans[ids[0]], spans[ids[1]]
    assert s1 < e2 and s2 < e1, lines  # the intervals overlap: both ran at once
    results = [(await queue.get(i))["result"] for i in ids]
    assert results[0]["pid"] != results[1]["pid"] and os.getpid() not in {r["pid"] for r in results}
    assert all(r["cpu_s"] >= 1.5 for r in results)  # each burned its own CPU time: no GIL between them


async def test_a_child_that_dies_fails_that_attempt_with_a_clear_error_and_the_worker_survives(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--process-pool", "1")
    try:
        task_id = await queue.enqueue("proc-crash", {"log": run_log})
        dead_id = await queue.enqueue("proc-crash", {"log": run_log}, max_retries=0)
        async_id = await queue.enqueue("proc-async", {"log": run_log, "n": 7})
        await eventually(lambda: _all(queue, [task_id, async_id], "succeeded"), timeout=30, what="retried, done")
        await eventually(lambda: _state(queue, dead_id, "dead"), timeout=30, what="no retries: dead")
        assert worker.poll() is None
    finally:
        procs.stop(worker)
    info = await queue.get(task_id)
    assert (info["attempts"], info["result"]) == (2, "survived")
    dead = await queue.get(dead_id)
    assert (dead["reason"], dead["crashes"]) == ("error", 0)  # an error of that attempt, not a worker crash
    assert dead["last_error"] and "died (exit code 7)" in dead["last_error"], dead["last_error"]
    assert (await queue.get(async_id))["result"]["echo"] == 7


async def test_sigterm_hands_back_a_running_process_task_and_leaves_no_child_behind(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--process-pool", "2", "--drain-timeout", "1")
    try:
        task_id = await queue.enqueue("proc-forever", {"log": run_log}, timeout=60)
        await eventually(lambda: len(runs(run_log)) == 1, timeout=20, what="the handler running in a child")
        below = descendants(worker.pid)
        assert runs(run_log)[0][2] in below and len(below) >= 3  # fork server and two children
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        procs.stop(worker)
    wait_until(lambda: not any(alive(p) for p in below), timeout=5, what="every child gone")
    info = await queue.get(task_id)
    assert (info["state"], info["attempts"]) == ("pending", 0)  # handed back, the attempt not counted


async def test_a_sigkilled_worker_leaves_no_child_behind(queue: Queue, settings: Settings, tmp_path: Path) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log", "--process-pool", "2")
    try:
        await queue.enqueue("proc-forever", {"log": run_log}, timeout=60)
        await eventually(lambda: len(runs(run_log)) == 1, timeout=20, what="the handler running in a child")
        below = descendants(worker.pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        procs.stop(worker)
    wait_until(lambda: not any(alive(p) for p in below), timeout=10, what="every child gone with its worker")


async def test_a_thread_handler_that_overruns_its_timeout_never_overlaps_its_retry(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    run_log = str(tmp_path / "runs")
    worker = start_worker(settings, queue, tmp_path / "w.log")
    try:
        task_id = await queue.enqueue("thread-overrun", {"log": run_log, "s": 3}, timeout=0.5)
        await eventually(lambda: _state(queue, task_id, "succeeded"), timeout=30, what="the retry succeeded")
    finally:
        procs.stop(worker)
    lines = runs(run_log)
    first = [t for m, _, _, a, t in lines if a == 1]
    second = [t for m, _, _, a, t in lines if a == 2]
    assert len(first) == 2 and len(second) == 2, lines
    assert second[0] >= first[1], lines  # the retry started after the first attempt's thread returned
    assert first[1] - first[0] >= 3e9
    info = await queue.get(task_id)
    assert (info["attempts"], info["failures"]) == (2, 1)  # the first attempt counted as a timeout
    text = (tmp_path / "w.log").read_text()
    assert f"task thread-overrun {task_id} timed out after 0.5s, but a thread cannot be stopped" in text, text
    assert re.search(rf"task thread-overrun {task_id}: its thread returned \d+\.\ds past its 0\.5s timeout", text), text


async def _state(queue: Queue, task_id: str, wanted: str) -> bool:
    return (await queue.get(task_id))["state"] == wanted


async def _all(queue: Queue, ids: list[str], wanted: str) -> bool:
    return all([(await queue.get(i))["state"] == wanted for i in ids])


async def test_a_worker_stopped_while_an_overrunning_thread_runs_hands_nothing_back_and_exits_at_once(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    """The retry must not start beside the thread: the process ends (and the thread with it) before any requeue."""
    run_log = str(tmp_path / "runs")
    log = tmp_path / "w1.log"
    worker = start_worker(settings, queue, log, "--lease", "3", "--drain-timeout", "1")
    try:
        task_id = await queue.enqueue("thread-overrun", {"log": run_log, "s": 30}, timeout=0.5)
        await eventually(lambda: "but a thread cannot be stopped" in log.read_text(), timeout=20, what="overrun")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 1
        exited = time.time_ns()
        assert (await queue.get(task_id))["state"] == "processing"  # not handed back
        second = start_worker(settings, queue, tmp_path / "w2.log", "--lease", "3")
        try:
            await eventually(lambda: _state(queue, task_id, "succeeded"), timeout=30, what="recovered, run again")
        finally:
            procs.stop(second)
    finally:
        procs.stop(worker)
    lines = runs(run_log)
    assert [(m, a) for m, _, _, a, _ in lines] == [("S", 1), ("S", 2), ("E", 2)], lines  # attempt 1 never ended
    assert lines[1][4] > exited
    assert "nothing is handed back" in log.read_text()
