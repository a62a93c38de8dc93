"""The dead-letter queue never deletes silently: cap and archive, export/import, edits, alerting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from reliq.connection import connect
from reliq.formats import as_format_1
from reliq.loops import cancel_all
from reliq.monitor.deadletter import Replay
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.worker.dead_trimmer import DeadTrimmer
from tests.flaky import Flaky
from tests.test_monitor import AUTH, TOKEN, client_for, dead_ids, invoke, make_dead, run_burst

assert client_for and dead_ids  # fixtures shared with the monitor's tests


async def fail_dead(queue: Queue, settings: Settings, n: int) -> list[str]:
    """``n`` tasks that fail once and are dead-lettered, oldest first."""
    ids = [await queue.enqueue("fail", {"invoice": i}, max_retries=0) for i in range(n)]
    await run_burst(queue, settings)
    return ids


async def test_a_capped_dead_letter_queue_archives_counts_and_logs_every_eviction(
    client_for: Any, redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await fail_dead(Queue(redis, settings), settings, 5)  # a worker without a cap: nothing trimmed yet
    settings = settings.replace(dead_cap=3)
    queue = Queue(redis, settings)
    with caplog.at_level(logging.WARNING, logger="reliq.worker.dead_trimmer"):
        assert await DeadTrimmer(queue, 1.0).run_once() == (2, 0)
    assert all(i in caplog.text for i in ids[:2]) and "archive" in caplog.text
    assert sorted(await queue.dead_ids()) == sorted(ids[2:])
    assert [a["task_id"] for _, a in await queue.dead_archived()] == [ids[1], ids[0]]
    client: TestClient = await client_for(queue, settings)
    stats = await (await client.get("/stats")).json()
    assert (stats["dead_letter"], stats["dead_evicted"], stats["dead_archived"], stats["dead_archive_dropped"]) == (
        3, 2, 2, 0)
    text = await (await client.get("/metrics")).text()
    assert f'reliq_dead_evicted_total{{queue="{queue.name}"}} 2.0' in text
    assert f'reliq_dead_archive_dropped_total{{queue="{queue.name}"}} 0.0' in text


async def test_what_falls_off_the_archive_is_counted_and_logged(
    redis: Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await fail_dead(Queue(redis, settings), settings, 4)
    settings = settings.replace(dead_cap=1, dead_archive_cap=2)
    queue = Queue(redis, settings)
    with caplog.at_level(logging.WARNING, logger="reliq.worker.dead_trimmer"):
        assert await DeadTrimmer(queue, 1.0).run_once() == (3, 1)
    assert "deleted for good" in caplog.text and ids[0] in caplog.text
    snap = await queue.snapshot()
    assert (snap["dead_letter"], snap["dead_archived"], snap["dead_evicted"], snap["dead_archive_dropped"]) == (
        1, 2, 3, 1)


async def test_a_worker_keeps_the_cap_in_the_background(redis: Redis, settings: Settings) -> None:
    from reliq.worker import Worker

    settings = settings.replace(dead_cap=2)
    queue = Queue(redis, settings)
    ids = [await queue.enqueue("fail", i, max_retries=0) for i in range(4)]
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(queue, settings).run(stop))
    try:
        async def trimmed() -> bool:
            return len(await queue.dead_archived()) == 2 and len(await queue.dead_ids()) == 2
        from tests.util import eventually
        await eventually(trimmed, what="the worker's trimmer evicting two")
    finally:
        stop.set()
        await worker
    kept = set(await queue.dead_ids()) | {a["task_id"] for _, a in await queue.dead_archived()}
    assert kept == set(ids)


async def test_oldest_dead_age_is_exported_for_alerting(client_for: Any, queue: Queue, settings: Settings) -> None:
    client: TestClient = await client_for(queue, settings)
    assert (await (await client.get("/stats")).json())["dead_oldest_age_s"] == 0
    await fail_dead(queue, settings, 1)
    await asyncio.sleep(0.3)
    age = (await (await client.get("/stats")).json())["dead_oldest_age_s"]
    assert 0.25 <= age < 30
    text = await (await client.get("/metrics")).text()
    line = next(ln for ln in text.splitlines() if ln.startswith("reliq_dead_letter_oldest_age_seconds{"))
    assert float(line.split()[-1]) >= 0.25


# -- export and import ----------------------------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _dead_and_archived(settings: Settings) -> tuple[list[str], list[str]]:
    redis = connect(settings.redis_url)
    try:
        uncapped = settings.replace(dead_cap=0)  # the workers leave the trimming to this function
        ids = await fail_dead(Queue(redis, uncapped), uncapped, 4)
        await make_dead(Queue(redis, uncapped), uncapped)
        await Queue(redis, settings).dead_trim()
        queue = Queue(redis, settings)
        archived = [a["task_id"] for _, a in await queue.dead_archived()]
        return ids, archived
    finally:
        await redis.aclose()


async def _records(settings: Settings) -> dict[str, dict[str, str]]:
    redis = connect(settings.redis_url)
    try:
        queue = Queue(redis, settings)
        ids = await queue.dead_ids(0, 1000)
        return dict(zip(ids, await queue.records(ids), strict=True))
    finally:
        await redis.aclose()


def test_export_then_import_twice_restores_every_dead_task_once(settings: Settings, tmp_path: Path) -> None:
    settings = settings.replace(dead_cap=8)
    fails, archived = _run(_dead_and_archived(settings))
    assert archived == [fails[1], fails[0]]  # 10 dead, cap 8: the two oldest went to the archive
    before = _run(_records(settings))
    result = invoke(settings, "dlq", "export", "--archived")
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(ln) for ln in result.stdout_bytes.splitlines()]
    assert [ln["task_id"] for ln in lines] == [*before, fails[1], fails[0]]
    assert [ln["archived"] for ln in lines] == [False] * 8 + [True] * 2
    assert lines[-1]["record"]["payload"] == {"invoice": 0} and lines[-1]["record"]["reason"] == "error"
    dump = tmp_path / "dead.jsonl"
    dump.write_bytes(result.stdout_bytes)

    assert invoke(settings, "dlq", "purge", "--all", "--yes").exit_code == 0
    first = invoke(settings, "dlq", "import", str(dump))
    assert first.exit_code == 0 and "imported 10 dead task(s), skipped 0" in first.output
    again = invoke(settings, "dlq", "import", str(dump))
    assert again.exit_code == 0 and "imported 0 dead task(s), skipped 10" in again.output
    after = _run(_records(settings))
    assert list(after) == [*before, fails[1], fails[0]]  # each once, newest first as before
    # a new queue's records are of format 2; a file spells them as format 1, and an import writes
    # that, which every version reads: the same task, field for field (formats.as_format_1)
    assert all("body" in record and "payload" not in record for record in before.values())
    assert not any("body" in ln["record"] for ln in lines)
    for task_id, record in before.items():
        assert after[task_id] == as_format_1(dict(record))
    assert after[fails[0]]["state"] == "dead" and after[fails[0]]["last_error"]


def test_export_filters_and_import_skips_ids_that_exist_in_any_state(settings: Settings, tmp_path: Path) -> None:
    _run(_dead_and_archived(settings))
    result = invoke(settings, "dlq", "export", "--type", "nope")
    lines = [orjson.loads(ln) for ln in result.stdout_bytes.splitlines()]
    assert len(lines) == 2 and {ln["record"]["reason"] for ln in lines} == {"unknown_type"}
    assert len(invoke(settings, "dlq", "export", "--reason", "error").stdout_bytes.splitlines()) == 7
    dump = tmp_path / "nope.jsonl"
    dump.write_bytes(result.stdout_bytes)
    assert invoke(settings, "dlq", "requeue", lines[0]["task_id"]).exit_code == 0  # now pending
    again = invoke(settings, "dlq", "import", str(dump))
    assert "imported 0 dead task(s), skipped 2" in again.output
    assert _run(_records(settings)).get(lines[0]["task_id"]) is None  # still pending, not dead again


@pytest.mark.parametrize("bad", [b"{nope\n", b'{"task_id": "a b", "record": {"type": "x"}}\n',
                                 b'{"task_id": "x", "record": {"type": "x", "attempts": 3}}\n', b"[1]\n"])
def test_import_refuses_a_bad_file_and_writes_nothing(settings: Settings, tmp_path: Path, bad: bytes) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_bytes(b'{"task_id": "ok1", "queue": "q", "record": {"type": "x"}}\n' + bad)
    result = invoke(settings, "dlq", "import", str(dump))
    assert result.exit_code == 2 and "line 2" in result.output and "nothing was imported" in result.output
    assert _run(_records(settings)) == {}


# -- editing a payload before requeuing ------------------------------------------------------


async def test_a_dead_task_edited_over_the_api_is_requeued_with_the_edit_recorded(
    client_for: Any, queue: Queue, settings: Settings
) -> None:
    client: TestClient = await client_for(queue, settings.replace(api_token=TOKEN))
    [task_id] = await fail_dead(queue, settings, 1)
    assert (await client.patch(f"/dead/{task_id}", json={"payload": {"invoice": 7}})).status == 401
    resp = await client.patch(f"/dead/{task_id}", json={"payload": {"invoice": 7}, "by": "ana"}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    shown = await resp.json()
    assert shown["payload"] == {"invoice": 7} and shown["state"] == "dead"
    [edit] = shown["edits"]
    assert edit["previous_payload"] == {"invoice": 0} and edit["by"].startswith("ana (monitor, write token")
    assert edit["at"].endswith("Z")
    for bad in ({"by": "x"}, {"payload": 1, "by": 5}):
        assert (await client.patch(f"/dead/{task_id}", json=bad, headers=AUTH)).status == 400
    assert (await client.patch("/dead/NOPE", json={"payload": 1}, headers=AUTH)).status == 404

    resp = await client.post(f"/dead/{task_id}/requeue", json={"payload": {"invoice": 8}}, headers=AUTH)
    assert resp.status == 200 and (await resp.json())["edited"] is True
    info = await queue.get(task_id)
    assert info["state"] == "pending" and info["payload"] == {"invoice": 8}
    [[edits]] = await queue.task_fields([task_id], ["edits"])
    assert [e["previous_payload"] for e in orjson.loads(edits or b"[]")] == ['{"invoice":0}', '{"invoice":7}']
    assert (await client.patch(f"/dead/{task_id}", json={"payload": 1}, headers=AUTH)).status == 404  # not dead


def test_cli_edits_a_dead_payload_and_requeues_it(settings: Settings, dead_ids: dict[str, list[str]]) -> None:
    task_id = dead_ids["fail"][0]
    assert invoke(settings, "dlq", "edit", task_id, "--payload", "{nope").exit_code == 2
    assert invoke(settings, "dlq", "edit", task_id, "--payload", '{"fixed": true}').exit_code == 0
    shown = orjson.loads(invoke(settings, "dlq", "show", task_id).output)
    assert shown["payload"] == {"fixed": True} and shown["edits"][0]["by"].endswith("(cli)")
    assert invoke(settings, "dlq", "requeue", *dead_ids["fail"][:2], "--payload", "1").exit_code == 2
    done = invoke(settings, "dlq", "requeue", task_id, "--payload", '{"fixed": 2}')
    assert done.exit_code == 0 and "edited and requeued" in done.output
    assert invoke(settings, "dlq", "edit", task_id, "--payload", "3").exit_code == 1  # no longer dead


# -- a requeue job survives the monitor's SIGKILL ----------------------------------------------


def _monitor(redis_url: str, queue: str, port: int, log: Path) -> Any:
    from reliq.redis_server import answers
    from tests.procs import reliq
    from tests.util import wait_until

    proc = reliq(["monitor", "--redis-url", redis_url, "--queue", queue, "--port", str(port)], log)
    wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, timeout=30, what="monitor listening")
    assert proc.poll() is None, log.read_text()
    return proc


async def _where(queue: Queue, ids: list[str]) -> tuple[list[str], list[str]]:
    pending = [i.decode() for i in await queue.redis.lrange(queue.keys.pending, 0, -1)]
    dead = await queue.dead_ids(0, 10_000)
    return pending, dead


async def test_a_monitor_killed_mid_requeue_job_loses_and_doubles_nothing(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    import aiohttp

    from reliq.redis_server import free_port
    from tests.procs import stop
    from tests.util import eventually

    queue = Queue(redis, settings)
    ids = await fail_dead(queue, settings, 60)
    port = free_port()
    monitor = _monitor(settings.redis_url, queue.name, port, tmp_path / "monitor.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, http.post(f"{base}/dead/requeue", json={"rate": 40}) as resp:
            assert resp.status == 202
        # Batches of 4 at 40/s: kill it once some, not all, went back.
        await eventually(lambda: _partly(queue, len(ids)), timeout=20, what="the job half way")
        monitor.kill()
        monitor.wait()
        pending, dead = await _where(queue, ids)
        assert 0 < len(pending) < len(ids)
        assert sorted(pending + dead) == sorted(ids)  # each id in exactly one place: nothing lost, none twice
        for task_id, info in zip(ids, [await queue.get(i) for i in ids], strict=True):
            assert info["state"] == ("pending" if task_id in pending else "dead"), task_id

        # Driving it again finishes the rest, and still takes nothing twice.
        monitor = _monitor(settings.redis_url, queue.name, port, tmp_path / "monitor2.log")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/dead/requeue") as resp:
                job = await resp.json()
            assert job["state"] == "running"

            async def finished() -> bool:
                async with http.get(f"{base}/jobs/{job['id']}") as r:
                    return (await r.json())["state"] == "done"

            await eventually(finished, timeout=20, what="the second job done")
        pending, dead = await _where(queue, ids)
        assert dead == [] and sorted(pending) == sorted(ids)
    finally:
        stop(monitor)


async def _partly(queue: Queue, total: int) -> bool:
    return 0 < await queue.redis.llen(queue.keys.pending) < total - 8


async def _replaying(queue: Queue, settings: Settings, flaky: Flaky,
                     fault: Callable[..., None]) -> tuple[list[str], Replay, asyncio.Task[Any]]:
    """Three dead tasks, and a replay of them started over ``flaky``'s client after ``fault``."""
    ids = await fail_dead(queue, settings, 3)
    replays = Queue(flaky.client, settings)
    await replays.dead_requeue(ids=[])  # the script is loaded: from now on one call a batch
    fault(script="dead_requeue")
    job = Replay(replays, id="requeue-test")
    return ids, job, asyncio.create_task(job.run())


async def test_a_replay_rides_out_an_outage_and_says_it_waits_for_redis_meanwhile(
    queue: Queue, settings: Settings, flaky: Flaky
) -> None:
    ids, job, run = await _replaying(queue, settings, flaky, flaky.down)
    await flaky.until(failed=3)
    view = job.view()
    assert view["state"] == "running" and (view["error"] or "").startswith("waiting for Redis: ")
    flaky.up()
    done = await asyncio.wait_for(run, 10)
    assert done["state"] == "done" and done["requeued"] == 3 and done["error"] is None
    assert [(await queue.get(i))["state"] for i in ids] == ["pending"] * 3


async def test_a_replay_stopped_while_redis_is_down_ends_and_requeues_nothing(
    queue: Queue, settings: Settings, flaky: Flaky
) -> None:
    ids, job, run = await _replaying(queue, settings, flaky, flaky.down)
    await flaky.until(failed=2)
    job.stop()
    done = await asyncio.wait_for(run, 10)  # it used to retry until Redis came back
    assert done["state"] == "cancelled" and done["requeued"] == 0
    assert [(await queue.get(i))["state"] for i in ids] == ["dead"] * 3


async def test_a_replay_cancelled_inside_a_redis_call_ends(queue: Queue, settings: Settings, flaky: Flaky) -> None:
    """redis-py turned the cancellation into a ConnectionError; the replay took it for an outage
    and retried for ever (it lacked reraise_if_cancelled), so a monitor could not shut down."""
    ids, job, run = await _replaying(queue, settings, flaky, flaky.stall)
    await flaky.until(stalled=1)
    await cancel_all([run], patience=5)
    assert run.done() and job.state == "cancelled" and flaky.stalled == 1
    assert [(await queue.get(i))["state"] for i in ids] == ["dead"] * 3
