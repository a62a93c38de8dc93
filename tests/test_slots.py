"""When periodic tasks are due (reliq/slots.py) and what a round decides (reliq.schedules.plan): pure, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from reliq.errors import InvalidSchedule
from reliq.schedules import SCAN, Schedule, make_schedule, plan, slot_of
from reliq.slots import Cron, Interval, between, next_after

PARIS = ZoneInfo("Europe/Paris")


def ms(text: str, tz: ZoneInfo | None = None) -> int:
    """An ISO time (UTC unless ``tz``) as ms on the epoch."""
    return int(datetime.fromisoformat(text).replace(tzinfo=tz or UTC).timestamp() * 1000)


def local(slots: list[int]) -> list[str]:
    return [datetime.fromtimestamp(s / 1000, PARIS).isoformat() for s in slots]


def test_intervals_are_aligned_on_the_epoch_whoever_computes_them() -> None:
    timing = Interval(30_000)
    assert next_after(timing, ms("2026-05-01T10:00:07")) == ms("2026-05-01T10:00:30")
    assert next_after(timing, ms("2026-05-01T10:00:30")) == ms("2026-05-01T10:01:00")  # strictly after
    assert between(timing, ms("2026-05-01T10:00:00"), ms("2026-05-01T10:01:30"), 10) == [
        ms("2026-05-01T10:00:30"), ms("2026-05-01T10:01:00"), ms("2026-05-01T10:01:30")]


def test_cron_in_a_time_zone_follows_its_wall_clock() -> None:
    timing = Cron("0 9 * * mon-fri", PARIS)
    # Friday 27 March (CET, +01:00), then Monday 30 March (CEST, +02:00): 09:00 on the wall both days
    assert between(timing, ms("2026-03-27T00:00:00"), ms("2026-03-31T00:00:00"), 10) == [
        ms("2026-03-27T08:00:00"), ms("2026-03-30T07:00:00")]


def test_spring_forward_a_slot_in_the_skipped_hour_runs_when_the_gap_ends() -> None:
    # 29 March 2026, Europe/Paris: 02:00 CET becomes 03:00 CEST; 02:30 never happens
    daily = Cron("30 2 * * *", PARIS)
    assert local(between(daily, ms("2026-03-27T12:00:00"), ms("2026-03-30T12:00:00"), 10)) == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    # several slots in the gap are one run, and none is lost around it
    quarter = Cron("*/15 1-3 * * *", PARIS)
    assert local(between(quarter, ms("2026-03-29T01:30:00", PARIS), ms("2026-03-29T03:30:00", PARIS), 20)) == [
        "2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00",
        "2026-03-29T03:30:00+02:00"]
    # hourly follows the wall: 23 runs on the 23-hour day
    hourly = between(Cron("0 * * * *", PARIS), ms("2026-03-29T00:00:00", PARIS) - 1,
                     ms("2026-03-30T00:00:00", PARIS) - 1, 100)
    assert len(hourly) == 23 and len(set(hourly)) == 23


def test_fall_back_a_slot_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    # 25 October 2026, Europe/Paris: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happen twice
    daily = Cron("30 2 * * *", PARIS)
    assert local(between(daily, ms("2026-10-24T12:00:00"), ms("2026-10-26T12:00:00"), 10)) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    every_20 = Cron("*/20 * * * *", PARIS)
    assert local(between(every_20, ms("2026-10-25T01:50:00", PARIS), ms("2026-10-25T02:00:00"), 20)) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:20:00+02:00", "2026-10-25T02:40:00+02:00",
        "2026-10-25T03:00:00+01:00"]  # not 02:00, 02:20, 02:40 CET again
    # a worker looking from inside the second pass finds the next slot after it, not one already run
    second_pass = ms("2026-10-25T01:10:00")  # 02:10 CET
    assert local([next_after(every_20, second_pass)]) == ["2026-10-25T03:00:00+01:00"]
    hourly = between(Cron("0 * * * *", PARIS), ms("2026-10-25T00:00:00", PARIS) - 1,
                     ms("2026-10-26T00:00:00", PARIS) - 1, 100)
    assert len(hourly) == 24  # the 25-hour day: 02:00 once


def every_s(seconds: float, missed: str = "skip", catch_up: int | None = None) -> Schedule:
    return make_schedule("s", type="t", every=seconds, missed=missed, catch_up=catch_up)


def test_nothing_due_decides_nothing() -> None:
    assert plan(every_s(2), ms("2026-05-01T10:00:00"), ms("2026-05-01T10:00:01")) is None


def test_slots_late_by_less_than_the_grace_all_run_whatever_the_policy() -> None:
    upto = ms("2026-05-01T10:00:00")
    decided = plan(every_s(2), upto, upto + 10_500)
    assert decided is not None
    assert decided.run == [upto + 2000 * i for i in range(1, 6)] and decided.skipped == 0
    assert decided.upto == upto + 10_500


@pytest.mark.parametrize(("missed", "catch_up", "run"), [
    ("skip", None, []), ("once", None, [-1]), ("catch_up", 3, [-3, -2, -1])])
def test_missed_slots_after_downtime_follow_the_policy(missed: str, catch_up: int | None, run: list[int]) -> None:
    schedule = make_schedule("s", type="t", cron="0 * * * *", missed=missed, catch_up=catch_up)
    upto = ms("2026-05-01T00:30:00")
    now = ms("2026-05-01T10:00:20")  # down 9.5 h: 01:00 .. 09:00 missed, 10:00 found 20 s late (on time)
    decided = plan(schedule, upto, now)
    assert decided is not None
    missed_slots = [ms(f"2026-05-01T{h:02d}:00:00") for h in range(1, 10)]
    assert decided.run == [missed_slots[i] for i in run] + [ms("2026-05-01T10:00:00")]
    assert decided.skipped == len(missed_slots) - len(run)
    assert decided.upto == now


def test_a_long_downtime_is_decided_in_bounded_steps_each_counted() -> None:
    schedule = make_schedule("s", type="t", cron="* * * * *", missed="catch_up", catch_up=2)
    upto, now = ms("2026-01-01T00:00:00"), ms("2026-01-06T00:00:00")  # 7,200 minutes
    total_skipped, ran, steps = 0, [], 0
    while (decided := plan(schedule, upto, now)) is not None:
        steps += 1
        total_skipped += decided.skipped
        ran += decided.run
        upto = decided.upto
        if not decided.more:
            break
    assert steps == 4
    assert ran == [now - 120_000, now - 60_000, now]  # the newest two missed, and the one on time
    assert total_skipped + len(ran) == (now - ms("2026-01-01T00:00:00")) // 60_000
    assert (now - ms("2026-01-01T00:00:00")) // 60_000 > SCAN


def test_intervals_count_any_downtime_in_one_step() -> None:
    upto = ms("2025-01-01T00:00:00")
    now = upto + 365 * 86_400_000
    decided = plan(every_s(1), upto, now)
    assert decided is not None and not decided.more
    assert decided.skipped == 365 * 86_400 - 60 and decided.run == [now - 1000 * i for i in range(59, -1, -1)]


@pytest.mark.parametrize(("fields", "message"), [
    ({"cron": "61 * * * *"}, "not a valid cron"),
    ({"cron": "* * * * * *"}, "five fields"),
    ({"cron": "0 0 30 2 *"}, "never fires"),
    ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "0 9 * * *", "tz": "../../etc/passwd"}, "unknown time zone"),
    ({"every": 0.5}, "'every' must be"),
    ({"every": True}, "'every' must be"),
    ({}, "either 'cron'"),
    ({"cron": "@daily", "every": 5}, "either 'cron'"),
    ({"every": 5, "missed": "later"}, "'missed' must be"),
    ({"every": 5, "catch_up": 3}, "goes with missed='catch_up'"),
    ({"every": 5, "missed": "catch_up", "catch_up": 0}, "'catch_up' must be"),
    ({"every": 5, "max_retries": -1}, "max_retries"),
])
def test_bad_definitions_are_refused_saying_why(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        make_schedule("s", type="t", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "a:b", "x" * 101, 5])
def test_bad_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidSchedule, match="name"):
        make_schedule(name, type="t", every=5)


def test_a_slot_task_carries_its_slot_in_its_id_and_idempotency_key() -> None:
    spec = make_schedule("daily-report", type="send-report", cron="0 9 * * *", payload={"to": "ops"},
                         max_retries=5).slot_task(ms("2026-05-01T09:00:00"))
    assert spec.id == f"daily-report:{ms('2026-05-01T09:00:00')}"
    assert spec.idempotency_key == f"schedule:daily-report:{ms('2026-05-01T09:00:00')}"
    assert spec.type == "send-report" and spec.payload == b'{"to":"ops"}' and spec.max_retries == 5
    assert slot_of(spec.id) == ms("2026-05-01T09:00:00") and slot_of("01JABCDEF") is None
