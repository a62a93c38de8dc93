"""Periodic schedules on a real Redis: the decision scripts, the enqueuer's rounds, the API (reliq/schedules.py)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from reliq.errors import ScheduleNotFound
from reliq.queue import Queue
from reliq.schedules import DECLARED, Declared, Plan, Schedule, make_schedule, periodic, read_one, slot_id, slot_of
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer
from tests import procs
from tests.util import api_client, eventually


async def redis_now(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def rewind(queue: Queue, name: str, ms: int) -> int:
    """Pretend no worker ran for ``ms``: move the schedule's cursor back; return the cursor set."""
    upto = await redis_now(queue.redis) - ms
    await queue.redis.hset(queue.keys.schedule(name), "upto", upto)
    return upto


async def pending_ids(queue: Queue) -> list[str]:
    return sorted(i.decode() for i in await queue.redis.lrange(queue.keys.pending, 0, -1))


def every(seconds: float, name: str = "tick", **options: Any) -> Schedule:
    return make_schedule(name, type="noop", every=seconds, **options)


async def test_many_enqueuers_racing_over_due_slots_enqueue_each_once(queue: Queue) -> None:
    enqueuers = [PeriodicEnqueuer(queue, [Declared(every(1), None)]) for _ in range(3)]
    await enqueuers[0].declare()
    upto = await rewind(queue, "tick", 5_500)
    rounds = await asyncio.gather(*(e.run_once() for e in enqueuers))
    slots = [s for s in range((upto // 1000 + 1) * 1000, rounds[0].now_ms + 1, 1000)]
    expected = sorted(slot_id("tick", s) for s in slots)
    assert len(expected) >= 5
    assert sorted(i for r in rounds for i in r.enqueued) == expected  # each by exactly one of them
    # one decision was recorded; the others lost the race, or came after it
    assert [o for r in rounds for o in r.outcomes.values()].count("ok") == 1
    assert await pending_ids(queue) == expected
    snap = await queue.snapshot()
    assert snap["schedule_enqueued"] == snap["enqueued"] == len(expected) and snap["schedule_skipped"] == 0
    info = await read_one(queue, "tick")
    assert info["last_task_id"] == expected[-1] and info["last_task_state"] == "pending"
    assert info["enqueued"] == len(expected) and info["source"] == "code"
    assert info["next_run_ms"] is not None and info["next_run_ms"] > slots[-1]
    # the next rounds find nothing new until the next slot
    again = await enqueuers[1].run_once()
    assert again.enqueued == [] or again.enqueued == [slot_id("tick", slots[-1] + 1000)]


@pytest.mark.parametrize(("missed", "catch_up", "ran_missed"), [("skip", None, 0), ("once", None, 1),
                                                              ("catch_up", 4, 4)])
async def test_after_downtime_missed_slots_follow_the_schedules_policy(queue: Queue, missed: str,
                                                                       catch_up: int | None, ran_missed: int) -> None:
    schedule = every(10, missed=missed, catch_up=catch_up)
    enqueuer = PeriodicEnqueuer(queue, [Declared(schedule, None)])
    await enqueuer.declare()
    upto = await rewind(queue, "tick", 300_000)  # five minutes without a worker
    done = await enqueuer.run_once()
    slots = list(range((upto // 10_000 + 1) * 10_000, done.now_ms + 1, 10_000))
    on_time = [s for s in slots if s > done.now_ms - 60_000]
    late = [s for s in slots if s <= done.now_ms - 60_000]
    expected = late[len(late) - ran_missed:] if ran_missed else []
    assert done.enqueued == [slot_id("tick", s) for s in expected + on_time]
    assert done.skipped == len(late) - ran_missed
    snap = await queue.snapshot()
    assert snap["schedule_skipped"] == len(late) - ran_missed
    assert snap["schedule_enqueued"] == len(expected) + len(on_time)
    assert (await read_one(queue, "tick"))["skipped"] == len(late) - ran_missed


async def test_a_slot_ahead_of_the_redis_clock_is_refused_whatever_the_workers_clock(queue: Queue) -> None:
    """A worker whose clock runs minutes ahead would decide slots that are not due: Redis says no."""
    schedule = every(2)
    await queue.schedule_put(schedule, "api")
    before = await queue.redis.hgetall(queue.keys.schedule("tick"))
    upto = before[b"upto"].decode()
    ahead = (await redis_now(queue.redis) // 2000 + 150) * 2000  # five minutes on
    slots = orjson.dumps([ahead])
    assert await queue.schedule_fire("tick", schedule.version, upto, Plan([ahead], 0, ahead), slots) == "early"
    assert await queue.redis.hgetall(queue.keys.schedule("tick")) == before  # nothing written
    # a stale cursor (another worker decided first) and a changed definition are refused too
    now = await redis_now(queue.redis)
    assert await queue.schedule_fire("tick", schedule.version, str(int(upto) - 1), Plan([], 1, now),
                                     b"[]") == "raced"
    assert await queue.schedule_fire("tick", "0" * 16, upto, Plan([], 1, now), b"[]") == "changed"
    assert await queue.redis.hgetall(queue.keys.schedule("tick")) == before
    assert await pending_ids(queue) == []


async def test_a_worker_dying_between_decision_and_enqueue_leaves_the_slots_to_the_next_round(queue: Queue) -> None:
    schedule = every(1)
    await queue.schedule_put(schedule, "api")
    upto = await rewind(queue, "tick", 3_500)
    now = await redis_now(queue.redis)
    slots = list(range((upto // 1000 + 1) * 1000, now + 1, 1000))
    firing = orjson.dumps(slots)
    # the decision is recorded, then its worker dies before enqueuing anything
    assert await queue.schedule_fire("tick", schedule.version, str(upto), Plan(slots, 0, now), firing) == "ok"
    assert (await read_one(queue, "tick"))["firing"] == len(slots)
    # another worker dying after enqueuing half of them, before marking the decision done
    await queue.enqueue_specs([schedule.slot_task(slots[0])])
    done = await PeriodicEnqueuer(queue).run_once()
    assert sorted(done.enqueued) == sorted(slot_id("tick", s) for s in slots)
    assert await pending_ids(queue) == sorted(slot_id("tick", s) for s in slots)  # each once
    snap = await queue.snapshot()
    assert snap["enqueued"] == len(slots) and snap["schedule_enqueued"] == len(slots)
    info = await read_one(queue, "tick")
    assert info["firing"] == 0 and info["last_task_id"] == slot_id("tick", slots[-1])


async def test_code_declares_a_run_time_definition_overrides_until_removed(queue: Queue,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    code = make_schedule("report", type="send-report", cron="0 9 * * *", tz="Europe/Paris")
    enqueuer = PeriodicEnqueuer(queue, [Declared(code, None)])
    await enqueuer.declare()
    assert (await read_one(queue, "report"))["source"] == "code"
    await enqueuer.declare()  # a second worker starting: unchanged
    override = make_schedule("report", type="send-report", cron="30 7 * * *", tz="Europe/Paris")
    assert await queue.schedule_put(override, "api") == "updated"
    await enqueuer.declare()  # a deploy: the run-time definition stays, and the log says so
    info = await read_one(queue, "report")
    assert info["cron"] == "30 7 * * *" and info["source"] == "api"
    assert "differs from the code's and wins" in caplog.text
    assert await queue.schedule_remove("report")
    await enqueuer.declare()
    assert (await read_one(queue, "report"))["cron"] == "0 9 * * *"


async def test_a_new_timing_moves_the_cursor_to_now_and_a_new_payload_keeps_it(queue: Queue) -> None:
    await queue.schedule_put(every(60), "api")
    upto = await rewind(queue, "tick", 600_000)
    assert await queue.schedule_put(every(60, payload={"v": 2}), "api") == "updated"
    assert int(await queue.redis.hget(queue.keys.schedule("tick"), "upto")) == upto  # type: ignore[arg-type]
    assert await queue.schedule_put(every(30, payload={"v": 2}), "api") == "updated"
    assert int(await queue.redis.hget(queue.keys.schedule("tick"), "upto")) > upto  # type: ignore[arg-type]
    assert (await PeriodicEnqueuer(queue).run_once()).enqueued == []  # no slot of the old timing runs late


async def test_a_paused_schedule_runs_nothing_and_resumes_from_now(queue: Queue) -> None:
    await queue.schedule_put(every(1), "api")
    assert await queue.schedule_pause("tick", True, "ops") is True
    assert await queue.schedule_pause("tick", True, "ops") is False
    await rewind(queue, "tick", 5_000)
    assert (await PeriodicEnqueuer(queue).run_once()).enqueued == []
    info = await read_one(queue, "tick")
    assert info["paused"] and info["paused_by"] == "ops" and info["next_run"] is None
    assert await queue.schedule_pause("tick", False, "ops") is True
    done = await PeriodicEnqueuer(queue).run_once()
    assert done.enqueued == [] and done.skipped == 0  # slots while paused are neither run nor counted
    with pytest.raises(ScheduleNotFound, match="nope"):
        await queue.schedule_pause("nope", True, "ops")


def test_periodic_declares_directly_or_above_a_task_its_type_defaulting_to_the_handlers() -> None:
    import reliq

    before = dict(DECLARED)
    try:
        reliq.periodic("0 9 * * mon-fri", type="send-report", payload={"to": "ops"}, tz="Europe/Paris",
                       name="daily-report")

        @reliq.periodic(every=30, name="heartbeat-check", queue="ops")
        @reliq.task("check-heartbeat")
        def check(payload: Any) -> None:
            pass

        daily = DECLARED[(None, "daily-report")].schedule
        assert (daily.type, daily.cron, daily.tz, daily.payload) == ("send-report", "0 9 * * mon-fri",
                                                                     "Europe/Paris", {"to": "ops"})
        assert DECLARED[("ops", "heartbeat-check")].schedule.type == "check-heartbeat"
        with pytest.raises(reliq.InvalidSchedule, match=r"above @reliq\.task"):
            periodic(every=5)(lambda payload: None)
        with pytest.raises(reliq.InvalidSchedule, match="declared twice"):
            periodic(every=5, type="send-report", name="daily-report")
    finally:
        DECLARED.clear()
        DECLARED.update(before)


# -- the API ------------------------------------------------------------------------------------


async def test_the_api_defines_lists_triggers_pauses_and_removes_schedules(queue: Queue) -> None:
    async with api_client(queue, queue.settings) as client:
        body = {"type": "send-report", "cron": "0 9 * * mon-fri", "tz": "Europe/Paris", "payload": {"to": "ops"}}
        created = await client.put("/schedules/daily-report", json=body)
        assert created.status == 201, await created.text()
        view = (await created.json())["schedule"]
        assert view["source"] == "api" and view["tz"] == "Europe/Paris" and view["next_run"].endswith("Z")
        again = await client.put("/schedules/daily-report", json=body)
        assert again.status == 200 and (await again.json())["status"] == "unchanged"
        listed = await (await client.get("/schedules")).json()
        assert [s["name"] for s in listed["schedules"]] == ["daily-report"]
        fired = await client.post("/schedules/daily-report/trigger")
        assert fired.status == 202
        task_id = (await fired.json())["task_id"]
        assert task_id.startswith("daily-report:manual:") and await pending_ids(queue) == [task_id]
        shown = await (await client.get("/schedules/daily-report")).json()
        assert shown["last_task_id"] == task_id and shown["last_task_state"] == "pending" and shown["triggered"] == 1
        paused = await client.post("/schedules/daily-report/pause")
        assert (await paused.json())["schedule"]["paused"] is True
        resumed = await client.post("/schedules/daily-report/resume")
        assert (await resumed.json())["status"] == "resumed"
        assert (await client.delete("/schedules/daily-report")).status == 200
        assert (await client.get("/schedules/daily-report")).status == 404
        assert (await client.delete("/schedules/daily-report")).status == 404
        assert (await client.post("/schedules/daily-report/trigger")).status == 404


@pytest.mark.parametrize(("name", "body", "message"), [
    ("r", {"type": "t", "cron": "0 25 * * *"}, "not a valid cron"),
    ("r", {"type": "t", "cron": "0 9 * * *", "tz": "Europe/Atlantis"}, "unknown time zone"),
    ("r", {"type": "t", "cron": "0 0 31 2 *"}, "never fires"),
    ("r", {"type": "t"}, "either 'cron'"),
    ("r", {"cron": "@daily"}, "needs a 'type'"),
    ("r", {"cron": "@daily", "type": None}, "needs a 'type'"),
    ("r", {"type": "t", "every": 10, "colour": "red"}, "unknown field"),
    ("r", [1, 2], "JSON object"),
    ("bad:name", {"type": "t", "every": 10}, "name"),
    ("-r", {"type": "t", "every": 10}, "name"),
])
async def test_the_api_refuses_a_bad_schedule_saying_why_and_writes_nothing(queue: Queue, name: str, body: Any,
                                                                            message: str) -> None:
    async with api_client(queue, queue.settings) as client:
        answer = await client.put(f"/schedules/{name}", json=body)
        assert answer.status == 400, await answer.text()
        assert message in (await answer.json())["error"]
        assert (await client.get("/schedules/r")).status == 404
    assert await queue.redis.keys(queue.keys.base + "*") == []


# -- a fleet of real worker processes ---------------------------------------------------------------

FAKETIME = shutil.which("faketime")
APP = ("--app", "tests.apps.periodic", "--concurrency", "4")


async def _until_redis_clock(redis: Redis, at_ms: int) -> None:
    await eventually(lambda: _after(redis, at_ms), timeout=120, interval=0.1, what="Redis clock")


async def _after(redis: Redis, at_ms: int) -> bool:
    return await redis_now(redis) >= at_ms


@pytest.mark.serial
@pytest.mark.skipif(FAKETIME is None, reason="needs faketime (apt-get install faketime; .ci/run installs it)")
@pytest.mark.timeout(180)
async def test_three_workers_one_killed_two_with_clocks_minutes_off_run_each_2s_slot_once(
        redis_url: str, queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs.log"
    monkeypatch.setenv("RELIQ_TEST_RUN_LOG", str(runs))
    workers = [procs.worker(redis_url, queue.name, tmp_path / "w0.log", *APP),
               procs.worker(redis_url, queue.name, tmp_path / "w1.log", *APP, clock="-5m"),
               procs.worker(redis_url, queue.name, tmp_path / "w2.log", *APP, clock="+5m")]
    try:
        await eventually(lambda: queue.redis.exists(queue.keys.schedule("tick-2s")), timeout=90,
                         what="the schedule declared")
        await eventually(lambda: _workers_up(queue, 3), timeout=90, what="three workers")
        start = await redis_now(queue.redis)
        await _until_redis_clock(queue.redis, start + 10_000)
        workers[0].send_signal(signal.SIGKILL)
        await _until_redis_clock(queue.redis, start + 20_000)
        await queue.schedule_pause("tick-2s", True, "test")  # no new slot; let the enqueued ones finish
        await eventually(lambda: _all_ended(queue), timeout=60, what="every slot's task succeeded")
    finally:
        for w in workers[1:]:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            finally:
                procs.stop(w)
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert "Traceback" not in logs, logs[-5000:]
    ids = await _slot_ids(queue)
    slots = sorted(slot_of(i) or 0 for i in ids)
    assert slots == list(range(slots[0], slots[-1] + 1, 2000)), "a slot is missing"  # none skipped, none twice
    in_window = [s for s in slots if start <= s < start + 20_000]
    assert 9 <= len(in_window) <= 11, in_window
    snap = await queue.snapshot()
    assert snap["enqueued"] == snap["schedule_enqueued"] == len(ids) and snap["schedule_skipped"] == 0
    records = dict(zip(ids, await queue.records(ids), strict=True))
    for task_id, record in records.items():
        slot = slot_of(task_id) or 0
        # never before its slot by the Redis clock (the worker 5 minutes ahead), never minutes late (behind)
        assert 0 <= int(record["enqueued_at"]) - slot < 5_000, (task_id, record)
        assert record["state"] == "succeeded", (task_id, record)
    ran = [line.split()[0] for line in runs.read_text().splitlines()]
    assert sorted(set(ran)) == sorted(ids)
    twice = {i for i in ran if ran.count(i) > 1}
    assert all(int(records[i]["crashes"]) > 0 for i in twice), twice  # only a run the killed worker held


async def _workers_up(queue: Queue, n: int) -> bool:
    return int(await queue.redis.zcard(queue.keys.workers)) >= n


async def _slot_ids(queue: Queue) -> list[str]:
    prefix = queue.keys.task("tick-2s:")
    return sorted([k.decode()[len(queue.keys.task_prefix):] async for k in queue.redis.scan_iter(prefix + "*")])


async def _all_ended(queue: Queue) -> bool:
    ids = await _slot_ids(queue)
    return bool(ids) and all(r.get("state") == "succeeded" for r in await queue.records(ids))


# -- the CLI ----------------------------------------------------------------------------------------


def _cli(redis_url: str, queue: Queue, *args: str) -> Any:
    from click.testing import CliRunner

    from reliq.cli import main

    return CliRunner().invoke(main, ["schedule", *args, "--redis-url", redis_url, "--queue", queue.name])


async def _stored(redis_url: str, queue: Queue) -> list[Any]:
    from reliq.connection import connect
    from reliq.schedules import read

    redis = connect(redis_url)
    try:
        return list(await read(Queue(redis, queue.settings)))
    finally:
        await redis.aclose()


def test_the_schedule_commands(redis_url: str, queue: Queue) -> None:
    added = _cli(redis_url, queue, "add", "nightly", "--type", "invoice", "--cron", "0 2 * * *", "--tz",
                 "Europe/Paris", "--payload", '{"batch": 1}', "--missed", "once", "--max-retries", "5")
    assert added.exit_code == 0 and "created" in added.output, added.output
    listed = _cli(redis_url, queue, "list", "--json")
    [view] = orjson.loads(listed.output)["schedules"]
    assert (view["name"], view["cron"], view["tz"], view["missed"], view["payload"]) == (
        "nightly", "0 2 * * *", "Europe/Paris", "once", {"batch": 1})
    assert view["max_retries"] == 5
    assert "nightly" in _cli(redis_url, queue, "list").output
    triggered = _cli(redis_url, queue, "trigger", "nightly")
    assert triggered.exit_code == 0 and triggered.output.startswith("nightly:manual:")
    assert "paused" in _cli(redis_url, queue, "pause", "nightly").output
    assert asyncio.run(_stored(redis_url, queue))[0]["paused_by"].endswith("(cli)")
    assert "was paused already" in _cli(redis_url, queue, "pause", "nightly").output
    assert "resumed" in _cli(redis_url, queue, "resume", "nightly").output
    assert "removed" in _cli(redis_url, queue, "remove", "nightly").output
    for action in ("remove", "trigger", "pause", "resume"):
        gone = _cli(redis_url, queue, action, "nightly")
        assert gone.exit_code == 1 and "no schedule 'nightly'" in gone.output, gone.output


@pytest.mark.parametrize("args", [
    ["add", "n", "--type", "t", "--cron", "0 9 * * * *"], ["add", "n", "--type", "t", "--cron", "0 9 * * *",
                                                           "--tz", "Nowhere/Land"],
    ["add", "n", "--type", "t"], ["add", "n:1", "--type", "t", "--every", "5"],
    ["add", "n", "--type", "t", "--every", "5", "--payload", "{bad"], ["pause", "a b"]])
def test_the_schedule_commands_refuse_bad_input_with_exit_2_and_write_nothing(redis_url: str, queue: Queue,
                                                                             args: list[str]) -> None:
    result = _cli(redis_url, queue, *args)
    assert result.exit_code == 2, result.output
    assert asyncio.run(_stored(redis_url, queue)) == []


async def test_stats_and_metrics_count_schedules_and_their_enqueued_and_skipped_slots(queue: Queue) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from reliq.monitor import app as monitor

    enqueuer = PeriodicEnqueuer(queue, [Declared(every(10), None), Declared(every(60, name="slow"), None)])
    await enqueuer.declare()
    await rewind(queue, "tick", 120_000)
    done = await enqueuer.run_once()
    await queue.schedule_pause("slow", True, "ops")
    async with TestClient(TestServer(monitor.create_app(queue, queue.settings))) as client:
        stats = await (await client.get("/stats")).json()
        assert stats["schedules"] == {"total": 2, "paused": 1, "firing": 0}
        assert stats["schedule_enqueued"] == len(done.enqueued) and stats["schedule_skipped"] == done.skipped > 0
        listed = await (await client.get("/schedules")).json()
        assert [s["name"] for s in listed["schedules"]] == ["slow", "tick"]
        text = await (await client.get("/metrics")).text()
    q = queue.name
    assert f'reliq_schedules{{queue="{q}",state="running"}} 1.0' in text
    assert f'reliq_schedules{{queue="{q}",state="paused"}} 1.0' in text
    assert f'reliq_schedule_slots_enqueued_total{{queue="{q}"}} {float(len(done.enqueued))}' in text
    assert f'reliq_schedule_slots_skipped_total{{queue="{q}"}} {float(done.skipped)}' in text
    assert f'reliq_schedule_next_run_timestamp_seconds{{queue="{q}",schedule="tick"}}' in text
    assert 'schedule="slow"' not in text  # paused: no next run


async def test_a_redis_out_of_memory_is_one_warning_not_a_traceback_a_second(
        queue: Queue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from redis.exceptions import OutOfMemoryError

    async def refused(name: str = "") -> list[Any]:
        raise OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")

    caplog.set_level("INFO", logger="reliq.worker.periodic_enqueuer")
    enqueuer = PeriodicEnqueuer(queue)
    monkeypatch.setattr(queue, "schedule_rows", refused)
    await enqueuer._round()
    await enqueuer._round()
    assert caplog.text.count("Redis refuses writes") == 1 and "Traceback" not in caplog.text
    monkeypatch.undo()
    await enqueuer._round()
    assert "takes writes again" in caplog.text
