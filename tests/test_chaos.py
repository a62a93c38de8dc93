"""`reliq chaos`: the short CI run, the audit's verdicts, and the core bugs chaos runs found."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from reliq.chaos.audit import Execution, RedisState, audit, merge, read_executions, worker_pid
from reliq.chaos.faults import KINDS, NOT_ON_A_CLUSTER, Event, FaultLog, plan
from reliq.chaos.load import Accepted
from reliq.chaos.tasks import FAIL, NOOP, POISON
from reliq.cli import main
from reliq.queue import COUNTERS, Outcome, Queue
from reliq.settings import Settings
from reliq.worker import Worker
from tests.util import move_in

LEASE = 3.0


def _state(records: dict[str, dict[str, str]], **counters: int) -> RedisState:
    return RedisState(records=records, dead=[i for i, r in records.items() if r["state"] == "dead"], pending=0,
                      delayed=0, processing={}, workers=[], counters={c: counters.get(c, 0) for c in COUNTERS},
                      metrics={"t|chaos.noop|ok": counters.get("succeeded", 0),
                               "t|chaos.fail|error": counters.get("failed", 0)})


def _accepted(*items: tuple[str, str]) -> dict[str, Accepted]:
    expect = {FAIL: "dead:error", POISON: "dead:crashed"}
    return {i: Accepted(i, t, 0.0, expect.get(t, "succeeded")) for i, t in items}


def _faults(*events: Event) -> FaultLog:
    log = FaultLog()
    log.events.extend(events)
    return log


def test_a_clean_run_passes() -> None:
    report = audit(_accepted(("a", NOOP)), {"a": [Execution("a", 10, 1, 100.0, 100.1, "ok")]}, _faults(),
                   _state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=1), [], LEASE)
    assert report["ok"], report["problems"]
    assert report["tasks"]["succeeded"] == 1 and report["duplicates"]["duplicated"] == 0


def test_a_fail_task_requeued_from_the_dead_letters_and_dead_again_keeps_the_counters_exact() -> None:
    """The monitor-kill fault requeues dead chaos.fail tasks: each earlier life's two
    failures, one retry and one dead-lettering stay in the counters, not on the record."""
    runs = [Execution("f", 10, a, 100.0 + a, 100.5 + a, "error") for a in (1, 2, 1, 2)]
    record = {"state": "dead", "reason": "error", "failures": "2"}
    report = audit(_accepted(("f", FAIL)), {"f": runs}, _faults(),
                   _state({"f": record}, enqueued=1, dead=2, failed=4, retried=2, requeued=1), [], LEASE)
    assert report["ok"], report["problems"]
    assert report["duplicates"]["duplicated"] == 0  # each run after a failed one: retries, not duplicates


def test_the_partitions_states_merge_into_one_queue_that_passes_the_audit() -> None:
    """A partitioned queue's run: each partition's records, counters and workers read apart
    (collect), merged into one state — a worker registered in both once, zeros kept."""
    a = dataclasses.replace(_state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=1), workers=["h:1:x"],
                            processing={"h:1:x": []})
    b = dataclasses.replace(_state({"b": {"state": "succeeded"}}, enqueued=1, succeeded=1), workers=["h:1:x"],
                            processing={"h:1:x": []})
    merged = merge([a, b])
    assert (merged.counters["enqueued"], merged.counters["requeued"], merged.workers) == (2, 0, ["h:1:x"])
    runs = {i: [Execution(i, 1, 1, 100.0, 100.1, "ok")] for i in "ab"}
    report = audit(_accepted(("a", NOOP), ("b", NOOP)), runs, _faults(), merged, [1], LEASE)
    assert report["ok"], report["problems"]


def test_an_accepted_task_without_a_final_record_is_lost() -> None:
    report = audit(_accepted(("a", NOOP), ("b", NOOP)), {}, _faults(),
                   _state({"a": {"state": "processing"}}, enqueued=2), [], LEASE)
    assert not report["ok"]
    assert report["tasks"]["lost"] == 2
    assert {t["state"] for t in report["tasks"]["lost_tasks"]} == {"processing", "no record"}


def test_a_task_dead_for_the_wrong_reason_fails_the_run() -> None:
    records = {"a": {"state": "dead", "reason": "crashed"}}
    report = audit(_accepted(("a", NOOP)), {}, _faults(), _state(records, enqueued=1, dead=1), [], LEASE)
    assert report["tasks"]["wrong"] == 1 and not report["ok"]


def test_an_innocent_quarantined_only_by_our_kills_is_reported_apart_not_wrong() -> None:
    records = {"a": {"state": "dead", "reason": "crashed", "crashes": "3"}}
    runs = [Execution("a", pid, n, 100.0 + n) for n, pid in enumerate((10, 11, 12), start=1)]
    killed = [Event(100.5 + n, "worker", pid, "kill") for n, pid in enumerate((10, 11, 12), start=1)]
    report = audit(_accepted(("a", NOOP)), {"a": runs}, _faults(*killed),
                   _state(records, enqueued=1, dead=1, recovered=2), [], LEASE)
    assert report["tasks"]["wrong"] == 0 and report["tasks"]["quarantined_by_injected_kills"] == ["a"]
    report = audit(_accepted(("a", NOOP)), {"a": runs}, _faults(*killed[:2]),
                   _state(records, enqueued=1, dead=1, recovered=2), [], LEASE)
    assert report["tasks"]["wrong"] == 1, "a crash we did not cause is the task's own"


def test_a_duplicate_after_its_worker_was_killed_is_explained_and_timed() -> None:
    runs = [Execution("a", 10, 1, 100.0), Execution("a", 11, 2, 103.5, 103.6, "ok")]
    faults = _faults(Event(100.2, "worker", 10, "kill"))
    report = audit(_accepted(("a", NOOP)), {"a": runs}, faults,
                   _state({"a": {"state": "succeeded", "crashes": "1"}}, enqueued=1, succeeded=1, recovered=1), [],
                   LEASE)
    assert report["ok"], report["problems"]
    assert report["duplicates"]["causes"] == {"worker SIGKILL": 1}
    assert report["recovery"]["max_s"] == 3.3


def test_a_duplicate_no_fault_explains_fails_the_run() -> None:
    runs = [Execution("a", 10, 1, 100.0, 100.1, "ok"), Execution("a", 11, 2, 101.0, 101.1, "ok")]
    report = audit(_accepted(("a", NOOP)), {"a": runs}, _faults(),
                   _state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=1), [], LEASE)
    assert report["duplicates"]["unexplained"] == 1 and not report["ok"]


def test_retries_after_failures_are_not_duplicates() -> None:
    runs = [Execution("a", 10, 1, 100.0, 100.1, "error"), Execution("a", 10, 2, 100.3, 100.4, "error")]
    records = {"a": {"state": "dead", "reason": "error", "failures": "2"}}
    report = audit(_accepted(("a", FAIL)), {"a": runs}, _faults(),
                   _state(records, enqueued=1, dead=1, failed=2, retried=1), [], LEASE)
    assert report["ok"], report["problems"]
    assert report["duplicates"]["duplicated"] == 0


def test_a_success_without_a_successful_run_fails_the_run() -> None:
    report = audit(_accepted(("a", NOOP)), {"a": [Execution("a", 10, 1, 100.0)]}, _faults(),
                   _state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=1), [], LEASE)
    assert report["tasks"]["succeeded_without_running"] == ["a"] and not report["ok"]


def test_a_counter_that_disagrees_with_the_records_fails_the_run() -> None:
    report = audit(_accepted(("a", NOOP)), {}, _faults(),
                   _state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=2), [], LEASE)
    assert [c["name"] for c in report["counters"] if not c["ok"]] == ["succeeded == records succeeded"]


def test_tasks_left_in_a_dead_workers_processing_list_fail_the_run() -> None:
    state = _state({"a": {"state": "succeeded"}}, enqueued=1, succeeded=1)
    state.processing = {"host:4242:abc": ["a"]}
    report = audit(_accepted(("a", NOOP)), {}, _faults(), state, [1], LEASE)
    assert report["orphans"]["of_dead_workers"] == ["host:4242:abc"] and not report["ok"]


def test_the_execution_log_pairs_starts_with_ends(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("S a 10 1 1000000000\nS b 10 1 1500000000\nE a 10 1 2000000000 ok\n")
    runs = read_executions(log)
    assert runs["a"] == [Execution("a", 10, 1, 1.0, 2.0, "ok")]
    assert runs["b"] == [Execution("b", 10, 1, 1.5)]  # its process died mid-run
    assert worker_pid("host:4242:abc") == 4242


async def test_a_moved_task_requeued_by_the_reaper_before_its_claim_is_not_lost(queue: Queue) -> None:
    """Found by the worker-stall fault: a worker stopped right after BLMOVE handed it a task
    wakes after the reaper requeued that task. Its claim used to mark the task processing
    by it while the task sat in pending, outside its list: the next claim elsewhere
    dropped it from pending, the late ack was stale, and the task stayed 'processing'
    in no list for ever."""
    task_id = await queue.enqueue("noop")
    await queue.heartbeat("w1", {}, 10)
    assert await move_in(queue, "w1") == task_id
    await asyncio.sleep(0.01)
    assert await queue.reap("w1", 0.001) == (1, 0, 0)
    late, _ = await queue.claim("w1", 1, task_id)  # the stale move is claimed late
    others, _ = await queue.claim("w2", 10)
    for worker, claimed in (("w1", late), ("w2", others)):
        await queue.settle(worker, [Outcome(t, "ok", "", 1) for t in claimed])
    assert len(late) + len(others) == 1
    assert (await queue.get(task_id))["state"] == "succeeded"


@pytest.mark.serial
@pytest.mark.timeout(260)
def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """The CI run: every fault kind at least once (~45 s of load); lost must be 0."""
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "reliq", "chaos", "--duration", "18", "--seed", "7", "--workers", "3",
         "--rate", "20", "--settle-timeout", "40", "--json", str(report_path), "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = orjson.loads(report_path.read_bytes())
    assert report["ok"] and report["tasks"]["lost"] == 0
    assert all(report["faults"][kind] >= 1 for kind in KINDS), report["faults"]
    assert report["tasks"]["accepted"] >= 200
    assert report["tasks"]["reached"].get("dead:crashed") == 1  # the poison pill, and no innocent task


async def test_an_unexpected_error_while_settling_does_not_strand_the_results(
        queue: Queue, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the Redis-kill fault: uvloop raises RuntimeError (not a connection error)
    when a command is written to a connection Redis has just closed. The settler caught
    only connection errors, so it died, and every later result of that worker waited in
    memory for ever while its heartbeat kept the reaper away from the tasks."""
    settle = Queue.settle
    calls = 0

    async def flaky_settle(self: Queue, worker_id: str, outcomes: Any, *args: Any) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        return await settle(self, worker_id, outcomes, *args)

    monkeypatch.setattr(Queue, "settle", flaky_settle)
    task_id = await queue.enqueue("noop")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(queue, settings).run(stop))
    try:
        for _ in range(100):  # up to 5 s
            if (await queue.get(task_id))["state"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert (await queue.get(task_id))["state"] == "succeeded"
    finally:
        stop.set()
        await worker


def test_bad_flags_get_a_clear_cli_error() -> None:
    result = CliRunner().invoke(main, ["chaos", "--duration", "0"])
    assert result.exit_code == 2 and "--duration" in result.output
    result = CliRunner().invoke(main, ["chaos", "--workers", "zero"])
    assert result.exit_code == 2 and "--workers" in result.output
    result = CliRunner().invoke(main, ["chaos", "--redis-cluster", "2"])  # Redis Cluster needs 3 primaries
    assert result.exit_code == 2 and "--redis-cluster" in result.output


def test_a_run_on_a_redis_cluster_plans_every_fault_but_the_one_node_proxy() -> None:
    """The manual cluster run (docs/chaos.md): `reliq chaos --redis-cluster 3 --partitions 3`."""
    kinds = plan(60, random.Random(1), NOT_ON_A_CLUSTER)
    assert "partition" not in kinds and set(kinds) == set(KINDS) - {"worker-kill", "partition"}
    assert "partition" in plan(60, random.Random(1))


