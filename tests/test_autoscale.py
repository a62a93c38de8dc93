"""``reliq_desired_workers``: Little's-law arithmetic on series recorded from real runs.

Each series was recorded once a second from one ``reliq work --concurrency 4`` process
running ``sleep 0.1`` tasks (so one process finishes at most 4 / 0.1 = 40 tasks/s)
while a producer enqueued at a fixed rate. Fields: t, arrived, runs, run_ms, pending,
lag_s, workers, slots.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from reliq.monitor import app as monitor
from reliq.monitor.autoscale import Reading, desired_workers, estimate, from_samples
from reliq.queue import Queue
from reliq.settings import Settings

# 20 tasks/s: the one worker keeps up, nothing waits.
UNDER_CAPACITY = [
    Reading(1795815756.82, 0, 0, 0, 0, 0.0, 1, 4),
    Reading(1795815757.82, 21, 19, 1891, 0, 0.0, 1, 4),
    Reading(1795815758.82, 41, 39, 3879, 0, 0.0, 1, 4),
    Reading(1795815759.82, 61, 59, 5868, 0, 0.0, 1, 4),
    Reading(1795815760.83, 81, 79, 7857, 0, 0.0, 1, 4),
    Reading(1795815761.83, 101, 99, 9843, 0, 0.0, 1, 4),
    Reading(1795815762.83, 120, 119, 11831, 0, 0.0, 1, 4),
]

# 60 tasks/s against 40 tasks/s of capacity: the backlog grows by 20 a second.
OVER_CAPACITY = [
    Reading(1795815740.41, 0, 0, 0, 0, 0.0, 1, 4),
    Reading(1795815741.42, 61, 36, 3589, 21, 0.338, 1, 4),
    Reading(1795815742.42, 121, 76, 7575, 41, 0.674, 1, 4),
    Reading(1795815743.42, 181, 116, 11565, 61, 1.01, 1, 4),
    Reading(1795815744.42, 241, 156, 15556, 81, 1.346, 1, 4),
    Reading(1795815745.43, 301, 196, 19544, 101, 1.683, 1, 4),
    Reading(1795815746.43, 362, 236, 23538, 122, 2.017, 1, 4),
    Reading(1795815747.43, 422, 276, 27531, 142, 2.355, 1, 4),
    Reading(1795815748.44, 482, 314, 31314, 164, 2.724, 1, 4),
    Reading(1795815749.44, 542, 354, 35304, 184, 3.06, 1, 4),
    Reading(1795815750.44, 600, 394, 39295, 202, 3.396, 1, 4),
]

# 150 tasks/s: almost four times what one process can do.
FLOODED = [
    Reading(1795815765.68, 0, 0, 0, 0, 0.0, 1, 4),
    Reading(1795815766.69, 152, 36, 3592, 112, 0.74, 1, 4),
    Reading(1795815767.69, 302, 76, 7582, 222, 1.475, 1, 4),
    Reading(1795815768.69, 452, 116, 11570, 332, 2.211, 1, 4),
    Reading(1795815769.69, 603, 156, 15558, 443, 2.948, 1, 4),
    Reading(1795815770.69, 753, 196, 19547, 553, 3.682, 1, 4),
    Reading(1795815771.69, 903, 236, 23543, 663, 4.418, 1, 4),
    Reading(1795815772.7, 1053, 276, 27533, 773, 5.152, 1, 4),
    Reading(1795815773.7, 1204, 316, 31531, 884, 5.887, 1, 4),
    Reading(1795815774.7, 1354, 354, 35318, 996, 6.635, 1, 4),
    Reading(1795815775.7, 1504, 394, 39306, 1106, 7.372, 1, 4),
    Reading(1795815776.7, 1655, 432, 43101, 1219, 8.121, 1, 4),
    Reading(1795815777.71, 1800, 472, 47104, 1324, 8.858, 1, 4),
]


def test_a_worker_that_keeps_up_is_enough_and_its_capacity_comes_from_run_times() -> None:
    e = estimate(UNDER_CAPACITY[1], UNDER_CAPACITY[-1])
    assert e.arrival_rate == pytest.approx(19.8, abs=0.3)
    assert not e.saturated
    assert e.per_worker == pytest.approx(40, rel=0.03)  # 4 slots / 0.1 s by Little's law
    assert e.desired_workers == 1


def test_arrivals_past_capacity_ask_for_enough_workers_measured_under_saturation() -> None:
    e = estimate(OVER_CAPACITY[2], OVER_CAPACITY[-1])
    assert e.saturated
    assert e.per_worker == pytest.approx(39.6, abs=0.5)
    assert e.arrival_rate == pytest.approx(59.9, abs=0.5)
    assert e.desired_workers == 2  # 60 / 40 = 1.5
    assert estimate(FLOODED[2], FLOODED[-1]).desired_workers == 4  # 150 / 40 = 3.75


def test_every_window_of_a_steady_series_gives_the_same_answer() -> None:
    for series, want in ((UNDER_CAPACITY, 1), (OVER_CAPACITY, 2), (FLOODED, 4)):
        answers = {estimate(old, new).desired_workers for old, new in zip(series[1:], series[3:], strict=False)}
        assert answers == {want}, series


def test_a_backlog_left_when_arrivals_stop_is_cleared_within_the_target_lag() -> None:
    last = FLOODED[-1]
    # ten seconds later: nothing arrived, one worker ran 400 more; 924 still wait
    later = Reading(last.t + 10, last.arrived, last.runs + 400, last.run_ms + 40_000, 924, 16.0, 1, 4)
    e = estimate(last, later)
    assert e.arrival_rate == 0
    assert e.needed_rate == pytest.approx(92.4)  # P / T
    assert e.desired_workers == 3  # 92.4 / 40
    assert estimate(last, later, target_lag_s=60).desired_workers == 1


def test_an_old_task_in_a_shallow_queue_counts_through_little_s_law() -> None:
    old = Reading(0, 0, 0, 0, 3, 20.0, 2, 8)
    new = Reading(10, 10, 16, 80_000, 5, 30.0, 2, 8)  # 1 task/s arrives, each runs 5 s, 8 slots busy
    e = estimate(old, new)
    assert e.needed_rate == pytest.approx(3.0)  # λ·lag/T = 1 * 30 / 10, more than P/T = 0.5
    assert e.desired_workers == 4  # saturated: each process finished 8 in 10 s, 0.8 tasks/s


def test_an_idle_queue_wants_no_worker_and_work_without_evidence_keeps_what_runs() -> None:
    idle = [Reading(0, 50, 50, 500, 0, 0.0, 3, 12), Reading(10, 50, 50, 500, 0, 0.0, 3, 12)]
    assert estimate(*idle).desired_workers == 0
    stuck = [Reading(0, 50, 50, 500, 7, 3.0, 0, 0), Reading(10, 50, 50, 500, 7, 13.0, 0, 0)]
    assert estimate(*stuck).desired_workers == 1
    assert desired_workers(10.0, None, 3, busy=True) == 3


def test_no_op_tasks_that_run_in_under_a_millisecond_do_not_divide_by_zero() -> None:
    e = estimate(Reading(0, 0, 0, 0, 0, 0.0, 1, 64), Reading(1, 500, 500, 0, 0, 0.0, 1, 64))
    assert e.per_worker == pytest.approx(128_000)
    assert e.desired_workers == 1


def test_readings_out_of_order_or_a_bad_target_are_refused() -> None:
    with pytest.raises(ValueError, match="time order"):
        estimate(OVER_CAPACITY[3], OVER_CAPACITY[1])
    with pytest.raises(ValueError, match="target lag"):
        estimate(OVER_CAPACITY[1], OVER_CAPACITY[3], target_lag_s=0)


@given(needed=st.floats(0.01, 1e6), per_worker=st.floats(0.01, 1e6))
def test_desired_workers_always_cover_the_needed_rate_with_less_than_one_to_spare(
    needed: float, per_worker: float
) -> None:
    n = desired_workers(needed, per_worker, 5, busy=True)
    assert n * per_worker >= needed * (1 - 1e-9)
    assert n == 1 or (n - 1) * per_worker < needed


async def test_the_monitor_exports_reliq_desired_workers_from_its_samples(queue: Queue, settings: Settings) -> None:
    app = monitor.create_app(queue, settings.replace(target_lag=5.0))
    async with TestClient(TestServer(app)) as http:
        sampler = app[monitor.SAMPLER]
        assert from_samples(list(sampler.samples)[-1:]) is None  # one reading is no rate
        for _ in range(30):
            await queue.enqueue("noop")
        await sampler.sample_once()
        await sampler.sample_once()
        body = await (await http.get("/metrics")).text()
    assert "# TYPE reliq_desired_workers gauge" in body
    # work waits and no worker has run anything yet: no capacity to go by, so at least one
    assert f'reliq_desired_workers{{queue="{queue.name}"}} 1.0' in body
