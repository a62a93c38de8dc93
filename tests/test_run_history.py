"""A task's run history: every run that does not succeed leaves an entry on its record.

Seeded through the real scripts (claim, settle, reap) on a private Redis; the record is
read back whole (tests/keyspace.py), through ``Queue.get``, the API, the monitor and
``reliq task ID``.
"""

from __future__ import annotations

import orjson
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from reliq.formats import Runs
from reliq.monitor import app as monitor
from reliq.queue import Outcome, Queue
from reliq.settings import Settings
from tests.keyspace import keyspace, run
from tests.test_shell import cli
from tests.util import api_client

W = "w1"


async def settle_next(queue: Queue, outcome: str, text: str = "boom", worker: str = W, delay_ms: int = 60_000) -> str:
    """Claim the next task as ``worker`` and settle it with ``outcome`` (retried after ``delay_ms``); its id."""
    [task], _ = await queue.claim(worker, 1)
    await queue.settle(worker, [Outcome(task, outcome, text, 1, delay_ms)])
    return task.id


async def test_a_task_that_succeeds_first_time_has_no_history(queue: Queue, redis: Redis) -> None:
    task_id = await queue.enqueue("noop", {"n": 1})
    await settle_next(queue, "ok", "null")
    space = await keyspace(redis, queue.name)
    assert "runs" not in space[f"task:{task_id}"]
    assert (await queue.get(task_id))["runs"] == []
    assert [k for k in space if "run" in k] == []  # the history is no key of its own either


async def test_each_failed_run_is_an_entry_and_a_later_success_keeps_them(queue: Queue, redis: Redis) -> None:
    # A payload past the listpack size: the success writes the record anew, keeping the history.
    task_id = await queue.enqueue("flaky", {"blob": "x" * 200}, max_retries=5)
    await settle_next(queue, "error", "ConnectionError: no route")
    await queue.run_now(task_id)
    await settle_next(queue, "timeout", "timed out after 1s", worker="w2")
    await queue.run_now(task_id)
    await settle_next(queue, "snooze", "snoozed for 60s")
    await queue.run_now(task_id)
    await settle_next(queue, "rate_limited", "", delay_ms=0)
    space = await keyspace(redis, queue.name)
    history = [run(1, "error", "retrying", "ConnectionError: no route"),
               run(2, "timeout", "retrying", "timed out after 1s", worker="w2"),
               run(3, "snooze", "scheduled", "snoozed for 60s"),
               run(3, "rate_limited", "pending", "")]  # the snooze gave attempt 3 back
    assert space[f"task:{task_id}"]["runs"] == history
    await settle_next(queue, "ok", '"done"')
    space = await keyspace(redis, queue.name)
    record = space[f"task:{task_id}"]
    assert (record["state"], record["attempts"], record["runs"]) == ("succeeded", "3", history)
    assert "payload" not in record  # compact, as any success
    got = await queue.get(task_id)
    assert [(r["attempt"], r["outcome"], r["state"], r["worker"]) for r in got["runs"]] == [
        (1, "error", "retrying", W), (2, "timeout", "retrying", "w2"), (3, "snooze", "scheduled", W),
        (3, "rate_limited", "pending", W)]
    assert all(r["at"] and r["at"].endswith("Z") for r in got["runs"])
    assert got["runs"][3]["error"] is None


async def test_the_history_keeps_the_last_runs_and_cuts_long_errors_whole_characters(queue: Queue,
                                                                                    redis: Redis) -> None:
    task_id = await queue.enqueue("doomed", None, max_retries=Runs.KEPT + 2)
    for n in range(1, Runs.KEPT + 3):
        await settle_next(queue, "error", f"failure {n}")
        await queue.run_now(task_id)
    await settle_next(queue, "permanent", "a" + "é" * Runs.ERROR_MAX)  # 1 + 2 * ERROR_MAX bytes
    runs = (await keyspace(redis, queue.name))[f"task:{task_id}"]["runs"]
    assert len(runs) == Runs.KEPT
    assert [r["attempt"] for r in runs] == list(range(Runs.KEPT + 4 - Runs.KEPT, Runs.KEPT + 4))
    assert [r["error"] for r in runs[:-1]] == [f"failure {n}" for n in range(4, Runs.KEPT + 3)]
    assert runs[-1] == run(Runs.KEPT + 3, "permanent", "dead", "a" + "é" * ((Runs.ERROR_MAX - 1) // 2))
    last = await queue.get(task_id)
    assert last["last_error"] == "a" + "é" * Runs.ERROR_MAX  # the last error stays whole
    assert last["state"] == "dead" and len(last["runs"]) == Runs.KEPT


async def test_the_reaper_writes_a_crashed_run_for_each_task_its_dead_worker_ran(queue: Queue,
                                                                                 redis: Redis) -> None:
    settings = queue.settings.replace(crash_limit=2)
    queue = Queue(redis, settings)
    task_id = await queue.enqueue("poison", None)
    for n in (1, 2):
        await queue.heartbeat(f"w{n}", {}, ttl_s=10)
        await queue.claim(f"w{n}", 1)
        assert await queue.reap(f"w{n}", lease_s=0) == ((1, 0, 0) if n == 1 else (0, 1, 0))
    record = (await keyspace(redis, queue.name))[f"task:{task_id}"]
    assert (record["state"], record["reason"]) == ("dead", "crashed")
    assert record["runs"] == [run(1, "crashed", "pending", "its worker died while running it (crash 1)", "w1"),
                              run(2, "crashed", "dead", "its worker died while running it (crash 2)", "w2")]


async def test_the_api_the_monitor_and_the_cli_show_the_history(queue: Queue, settings: Settings,
                                                                redis_url: str) -> None:
    task_id = await queue.enqueue("flaky", None, max_retries=3)
    await settle_next(queue, "error", "ValueError: bad row 7")
    want = [{"attempt": 1, "worker": W, "outcome": "error", "error": "ValueError: bad row 7", "state": "retrying"}]

    def shown(runs: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k != "at"} for r in runs]

    async with api_client(queue, settings) as http:
        resp = await http.get(f"/task/{task_id}", params={"queue": queue.name})
        assert resp.status == 200
        assert shown((await resp.json())["runs"]) == want
    mon = TestClient(TestServer(monitor.create_app(queue, settings)))
    await mon.start_server()
    try:
        resp = await mon.get(f"/task/{task_id}")
        assert resp.status == 200
        assert shown((await resp.json())["runs"]) == want
    finally:
        await mon.close()
    result = cli("task", task_id, "--queue", queue.name, redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert shown(orjson.loads(result.stdout)["runs"]) == want
