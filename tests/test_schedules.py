"""Periodic schedules on a real Redis: the decision scripts, the enqueuer's rounds, the API (reliq/schedules.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from reliq.queue import Queue
from reliq.schedules import DECLARED, Declared, Plan, Schedule, make_schedule, periodic, read_one, slot_id
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer
from tests.util import api_client


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
    await queue.enqueue_specs([schedule.slot_task(slots[0], 3)])
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
    assert await queue.schedule_pause("nope", True, "ops") is None


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
