"""Per-type retry policies (backoff, retry_on, give_up_on, max_retries) and reliq.Snooze.

Delays are read from Redis, never timed: the retry's due time in the delayed set minus
the failed attempt's ``started_at``, both on the Redis clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import reliq
from reliq import type_defaults
from reliq.connection import connect
from reliq.queue import Queue
from reliq.registry import REGISTRY, Context, Registry
from reliq.retry import RetryPolicy
from reliq.settings import Settings
from reliq.type_defaults import TypeDefaults
from reliq.worker import Worker
from tests.apps import policies
from tests.util import eventually

#: Slack allowed between an attempt's start and its settle (a loaded machine), ms.
SLACK_MS = 10_000


def always(exc: type[Exception]) -> Callable[[Any], None]:
    def handler(payload: Any) -> None:
        raise exc(payload)
    return handler


async def run_burst(settings: Settings, registry: Registry, timeout: float = 60) -> None:
    redis = connect(settings.redis_url)
    try:
        assert await asyncio.wait_for(Worker(Queue(redis, settings), settings, registry, burst=True).run(), timeout)
    finally:
        await redis.aclose()


async def retry_delays(queue: Queue, redis: Redis, registry: Registry, ids: list[str],
                       failures: int) -> dict[str, list[int]]:
    """Run a worker while each task in ``ids`` fails ``failures`` times; each retry's delay (ms).

    After each round of failures every retry is made due at once (its score set to 0),
    so the next attempt runs now instead of after its backoff.
    """
    delays: dict[str, list[int]] = {i: [] for i in ids}
    stop = asyncio.Event()
    worker = Worker(queue, queue.settings, registry)
    running = asyncio.create_task(worker.run(stop))
    try:
        for n in range(1, failures + 1):
            await eventually(lambda n=n: _all_failed(queue, ids, n), timeout=30, what=f"failure {n} of every task")
            for task_id in ids:
                due = await redis.zscore(queue.keys.delayed, task_id)
                started = await redis.hget(queue.keys.task(task_id), "started_at")
                assert due is not None and started is not None
                delays[task_id].append(int(due) - int(started))
            if n < failures:  # made due after the last round, they ran again before the worker stopped
                await redis.zadd(queue.keys.delayed, dict.fromkeys(ids, 0))
    finally:
        stop.set()
        await running
    return delays


async def _all_failed(queue: Queue, ids: list[str], n: int) -> bool:
    rows = await queue.task_fields(ids, ["state", "failures"])
    return all(r == [b"retrying", str(n).encode()] for r in rows)


def within(measured: list[int], expected_s: list[float]) -> bool:
    """Each delay is at least the expected one, and no more than the settle's slack above it."""
    return len(measured) == len(expected_s) and all(
        e * 1000 <= m <= e * 1000 + SLACK_MS for m, e in zip(measured, expected_s, strict=True))


async def test_each_backoff_schedules_its_retries_at_its_own_delays(queue: Queue, redis: Redis) -> None:
    registry = Registry()
    seen: list[tuple[int, str]] = []

    def by_attempt(n: int, exc: BaseException) -> float:
        seen.append((n, type(exc).__name__))
        return 30 * n + (7 if isinstance(exc, KeyError) else 0)

    policies_ = {
        "exponential": RetryPolicy(backoff="exponential", base=100, jitter=False),
        "linear": RetryPolicy(backoff="linear", base=100, jitter=False),
        "capped": RetryPolicy(backoff="exponential", base=100, cap=250, jitter=False),
        "function": RetryPolicy(backoff=by_attempt),
        "one-argument": RetryPolicy(backoff=lambda n: 1000 + n),
        "jittered": RetryPolicy(backoff="exponential", base=100),  # the default: equal jitter
    }
    for name, policy in policies_.items():
        registry.add(name, always(KeyError), retry=policy)
    ids = {name: await queue.enqueue(name, max_retries=5) for name in policies_}
    delays = await retry_delays(queue, redis, registry, list(ids.values()), failures=3)
    got = {name: delays[task_id] for name, task_id in ids.items()}
    assert within(got["exponential"], [100, 200, 400]), got
    assert within(got["linear"], [100, 200, 300]), got
    assert within(got["capped"], [100, 200, 250]), got
    assert within(got["function"], [37, 67, 97]), got
    assert within(got["one-argument"], [1001, 1002, 1003]), got
    assert seen == [(1, "KeyError"), (2, "KeyError"), (3, "KeyError")]
    for measured, full in zip(got["jittered"], [100, 200, 400], strict=True):
        assert full * 500 <= measured <= full * 1000 + SLACK_MS, got  # half fixed, half random


async def test_the_workers_retry_base_and_cap_fill_in_what_a_policy_leaves_out(queue: Queue, redis: Redis) -> None:
    registry = Registry()
    registry.add("linear", always(KeyError), retry=RetryPolicy(backoff="linear", jitter=False))
    settings = queue.settings.replace(retry_base=60.0, retry_cap=100.0)
    task_id = await queue.enqueue("linear", max_retries=5)
    delays = await retry_delays(Queue(queue.redis, settings), redis, registry, [task_id], failures=2)
    assert within(delays[task_id], [60, 100])


async def test_a_backoff_function_that_fails_falls_back_to_the_exponential_backoff(
    queue: Queue, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    registry.add("broken", always(KeyError), retry=RetryPolicy(backoff=lambda n: 1 / 0))
    registry.add("negative", always(KeyError), retry=RetryPolicy(backoff=lambda n: -5))
    settings = queue.settings.replace(retry_base=100.0)
    ids = [await queue.enqueue("broken"), await queue.enqueue("negative")]
    delays = await retry_delays(Queue(queue.redis, settings), redis, registry, ids, failures=1)
    for task_id in ids:
        [delay] = delays[task_id]
        assert 50_000 <= delay <= 100_000 + SLACK_MS  # retried all the same, on the default backoff
    assert "ZeroDivisionError" in caplog.text and "returned -5" in caplog.text


async def test_retry_on_and_give_up_on_route_each_error(queue: Queue, settings: Settings) -> None:
    await type_defaults.register([queue], REGISTRY)  # as a worker does at start: max_retries=1 of the type
    ids = {kind: await queue.enqueue("policy-picky", kind) for kind in ("value", "key", "connection")}
    await run_burst(settings, REGISTRY)
    infos = {kind: await queue.get(task_id) for kind, task_id in ids.items()}
    # not retried: in give_up_on, or not in retry_on; dead at once with its own error
    assert [(i["state"], i["reason"], i["attempts"], i["last_error"]) for i in (infos["value"], infos["key"])] == [
        ("dead", "permanent", 1, "ValueError: value"), ("dead", "permanent", 1, "KeyError: 'key'")]
    # retried: its type's max_retries=1 gives it a second attempt
    c = infos["connection"]
    assert (c["state"], c["reason"], c["attempts"], c["max_retries"]) == ("dead", "error", 2, 1)
    snap = await queue.snapshot()
    assert (snap["retried"], snap["dead"]) == (1, 3)


async def test_a_timeout_is_a_timeout_error_to_the_policy(queue: Queue, settings: Settings) -> None:
    registry = Registry()

    async def slow(payload: Any) -> None:
        await asyncio.sleep(30)

    registry.add("retried", slow, timeout=0.05, retry=RetryPolicy(base=0.01, retry_on=(TimeoutError,)))
    registry.add("given-up", slow, timeout=0.05, retry=RetryPolicy(give_up_on=(TimeoutError,)))
    retried = await queue.enqueue("retried", max_retries=1)
    given_up = await queue.enqueue("given-up", max_retries=1)
    await run_burst(settings, registry)
    r, g = await queue.get(retried), await queue.get(given_up)
    assert (r["state"], r["reason"], r["attempts"]) == ("dead", "timeout", 2)
    assert (g["state"], g["reason"], g["attempts"], g["last_error"]) == ("dead", "permanent", 1,
                                                                         "timed out after 0.05s")


async def test_a_process_isolated_handler_is_routed_by_its_child(queue: Queue, settings: Settings,
                                                                 tmp_path: Path) -> None:
    await type_defaults.register([queue], REGISTRY)
    value = await queue.enqueue("policy-picky-child", "value")
    connection = await queue.enqueue("policy-picky-child", "connection")
    marker = str(tmp_path / "snoozed-once")
    snoozer = await queue.enqueue("policy-snooze-child", marker)
    await run_burst(settings.replace(apps=("tests.apps.policies",), process_pool=1), REGISTRY)
    v, c, s = await queue.get(value), await queue.get(connection), await queue.get(snoozer)
    assert (v["state"], v["reason"], v["attempts"], v["last_error"]) == ("dead", "permanent", 1, "ValueError: value")
    assert (c["state"], c["reason"], c["attempts"]) == ("dead", "error", 2)
    assert (s["state"], s["attempts"], s["failures"], s["result"]) == ("succeeded", 1, 0, 1)


async def test_snooze_runs_again_later_without_spending_an_attempt(queue: Queue, settings: Settings,
                                                                   redis: Redis) -> None:
    attempts: list[int] = []

    async def patient(payload: Any, ctx: Context) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) <= 3:
            raise reliq.Snooze(0.01)
        return ctx.attempt

    registry = Registry()
    registry.add("patient", patient)
    task_id = await queue.enqueue("patient", max_retries=0)  # a spent attempt would make it dead
    await run_burst(settings, registry)
    info = await queue.get(task_id)
    assert (info["state"], info["attempts"], info["failures"], info["result"]) == ("succeeded", 1, 0, 1)
    assert attempts == [1, 1, 1, 1]
    assert [(r["attempt"], r["outcome"], r["state"]) for r in info["runs"]] == [(1, "snooze", "scheduled")] * 3
    snap = await queue.snapshot()
    assert (snap["snoozed"], snap["failed"], snap["retried"], snap["succeeded"]) == (3, 0, 0, 1)
    assert (await queue.metric_counts())["t|patient|snooze"] == 3


async def test_a_snoozed_task_waits_scheduled_with_its_attempts_as_before(queue: Queue, redis: Redis) -> None:
    registry = Registry()

    async def later(payload: Any) -> None:
        raise reliq.Snooze(600)

    registry.add("later", later)
    task_id = await queue.enqueue("later")
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(queue, queue.settings, registry).run(stop))
    try:
        await eventually(lambda: _snoozed(queue), timeout=30, what="snoozed")
    finally:
        stop.set()
        await running
    info = await queue.get(task_id)
    assert (info["state"], info["attempts"], info["failures"], info["last_error"]) == ("scheduled", 0, 0, None)
    due = await redis.zscore(queue.keys.delayed, task_id)
    started = await redis.hget(queue.keys.task(task_id), "started_at")
    assert due is not None and started is not None
    assert 600_000 <= int(due) - int(started) <= 600_000 + SLACK_MS


async def _snoozed(queue: Queue) -> bool:
    return (await queue.snapshot())["snoozed"] == 1


def test_snooze_takes_a_number_of_seconds() -> None:
    for bad in (-1, float("nan"), float("inf"), "60", None, True):
        with pytest.raises(ValueError, match="Snooze takes a number of seconds"):
            reliq.Snooze(bad)  # type: ignore[arg-type]
    assert reliq.Snooze(60).seconds == 60.0


async def test_a_types_max_retries_is_the_default_of_every_enqueue_once_a_worker_started(
    queue: Queue, settings: Settings
) -> None:
    registry = Registry()
    registry.add("patient", always(KeyError), defaults=TypeDefaults(max_retries=7))
    registry.add("plain", always(KeyError))
    before = await queue.enqueue("patient")
    await run_burst(settings.replace(retry_base=0.001, retry_cap=0.001), registry)
    after = await queue.enqueue("patient")
    explicit = await queue.enqueue("patient", max_retries=2)
    plain = await queue.enqueue("plain")
    got = [(await queue.get(i))["max_retries"] for i in (before, after, explicit, plain)]
    assert got == [settings.max_retries, 7, 2, settings.max_retries]
    # a worker serving the type without the default takes it out again
    registry.add("patient", always(KeyError))
    await run_burst(settings, registry)
    assert (await queue.get(await queue.enqueue("patient")))["max_retries"] == settings.max_retries


def test_a_producer_that_imports_the_handler_passes_its_defaults_itself() -> None:
    assert policies.picky.defaults.options() == {"max_retries": 1}
    assert policies.picky._with_defaults({}) == {"max_retries": 1}
    assert policies.picky._with_defaults({"max_retries": 4}) == {"max_retries": 4}


@pytest.mark.parametrize(("options", "message"), [
    ({"backoff": "fibonacci"}, "backoff must be one of 'exponential', 'linear' or a function"),
    ({"backoff": lambda: 1}, r"a backoff function must take \(attempt\) or \(attempt, exception\)"),
    ({"backoff": lambda a, b, c: 1}, r"a backoff function must take"),
    ({"retry_base": 0}, "retry_base must be a number of seconds above 0"),
    ({"retry_cap": -1}, "retry_cap must be a number of seconds above 0"),
    ({"retry_on": (ValueError, "KeyError")}, "retry_on must be an exception class or a tuple of them"),
    ({"give_up_on": (int,)}, "give_up_on must be an exception class or a tuple of them"),
    ({"max_retries": 101}, "max_retries must be an integer from 0 to 100"),
    ({"max_retries": True}, "max_retries must be an integer from 0 to 100"),
    ({"jitter": "yes"}, "jitter must be True or False"),
])
def test_a_bad_policy_fails_at_decoration_saying_what_is_wrong(options: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        reliq.task("never-registered", **options)
    assert REGISTRY.get("never-registered") is None
