"""Finished-task memory stays bounded: compact succeeded records, kept by count and by age."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

import reliq
from reliq.errors import ConfigError
from reliq.queue import Outcome, Queue, make_spec
from reliq.registry import REGISTRY, Registry
from reliq.settings import Retention, Settings
from reliq.worker.succeeded_trimmer import SucceededTrimmer
from tests.keyspace import keyspace
from tests.test_worker import registry_with, run_burst
from tests.util import api_client

W = "w1"


async def run_ok(queue: Queue, n: int = 1, type: str = "noop", payload: Any = None,
                 retention: dict[str, Retention] | None = None) -> list[str]:
    """Enqueue ``n`` tasks, claim them and settle them succeeded, one settle a task (oldest first)."""
    ids = [i for i, _ in await queue.enqueue_specs([make_spec(type, payload) for _ in range(n)])]
    tasks, _ = await queue.claim(W, n)
    by_id = {t.id: t for t in tasks}
    for task_id in ids:
        await queue.settle(W, [Outcome(by_id[task_id], "ok", '{"done":true}', 1)], retention)
    return ids


async def test_a_succeeded_record_is_compact_and_get_task_still_shows_it(queue: Queue, redis: Redis,
                                                                         settings: Settings) -> None:
    [a] = await queue.enqueue_specs([make_spec("noop", {"invoice": "x" * 500})])
    pending_bytes = await redis.memory_usage(queue.keys.task(a[0]))
    [task], _ = await queue.claim(W, 1)
    await queue.settle(W, [Outcome(task, "ok", '{"sent":true}', 3)])
    space = await keyspace(redis, queue.name)
    assert space == {
        "format": "2",  # a new queue's record format (records.lua)
        "workers": [W],
        "succeeded": [task.id],
        "stats": {"enqueued": "1", "succeeded": "1"},
        "metrics": space["metrics"],
        # Its 500-byte payload made it a hash table: written anew (settle.lua), its queued_at
        # (which stood for enqueued_at on the plain path) as enqueued_at; format 2 keeps its worker.
        f"task:{task.id}": {"type": "noop", "state": "succeeded", "attempts": "1", "failures": "0",
                            "crashes": "0", "enqueued_at": "T", "started_at": "T", "finished_at": "T",
                            "result": '{"sent":true}', "worker": W},
    }
    finished_bytes = await redis.memory_usage(queue.keys.task(task.id))
    assert pending_bytes and finished_bytes and finished_bytes < 320 < 600 < pending_bytes
    async with api_client(queue, settings) as client:
        info = await (await client.get(f"/task/{task.id}", params={"queue": queue.name})).json()
    assert (info["state"], info["attempts"], info["result"]) == ("succeeded", 1, {"sent": True})
    assert info["enqueued_at"] and info["started_at"] and info["finished_at"] and info["payload"] is None
    assert info["max_retries"] is None  # not kept: null, never a made-up value
    assert info["worker"] == W  # kept by a record of format 2 (docs/memory.md)


async def test_trimming_by_count_removes_the_oldest_records_and_counts_them(redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings.replace(keep_succeeded=3))
    ids = await run_ok(queue, 5)
    assert await redis.lrange(queue.keys.succeeded, 0, -1) == [i.encode() for i in reversed(ids[2:])]
    assert [await redis.exists(queue.keys.task(i)) for i in ids] == [0, 0, 1, 1, 1]
    snap = await queue.snapshot()
    assert (snap["succeeded"], snap["trimmed"], snap["expired"]) == (5, 2, 0)


async def test_trimming_by_age_removes_the_records_finished_too_long_ago_and_counts_them(
        redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings.replace(result_ttl=0.3))
    old = await run_ok(queue, 2)
    await asyncio.sleep(0.4)
    [new] = await run_ok(queue, 1)
    assert [await redis.exists(queue.keys.task(i)) for i in [*old, new]] == [0, 0, 1]
    assert await redis.lrange(queue.keys.succeeded, 0, -1) == [new.encode()]
    snap = await queue.snapshot()
    assert (snap["expired"], snap["trimmed"]) == (2, 0)


async def test_a_task_type_keeps_its_own_count_and_age(redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings.replace(keep_succeeded=10))
    own = {"report": Retention(count=1), "ping": Retention(count=0)}
    reports = await run_ok(queue, 3, "report", retention=own)
    noops = await run_ok(queue, 3, "noop", retention=own)
    pings = await run_ok(queue, 2, "ping", retention=own)
    assert [await redis.exists(queue.keys.task(i)) for i in reports] == [0, 0, 1]
    assert all([await redis.exists(queue.keys.task(i)) for i in noops])
    assert not any([await redis.exists(queue.keys.task(i)) for i in pings])  # keep none: gone at once
    assert await redis.lrange(queue.keys.succeeded_prefix + "report", 0, -1) == [reports[-1].encode()]
    assert len(await redis.lrange(queue.keys.succeeded, 0, -1)) == 3
    assert (await queue.snapshot())["trimmed"] == 2 + 2


async def test_a_worker_applies_its_registrys_retention_of_a_type(queue: Queue, redis: Redis,
                                                                       settings: Settings) -> None:
    registry: Registry = registry_with()
    registry.add("report", lambda payload: payload, retention=Retention(count=2))
    ids = [await queue.enqueue("report", i) for i in range(5)]
    await run_burst(settings, registry)
    kept = [i for i in ids if await redis.exists(queue.keys.task(i))]
    assert len(kept) == 2 and (await queue.snapshot())["trimmed"] == 3


def test_the_task_decorator_takes_a_types_retention() -> None:
    @reliq.task("t-retention-report", keep_succeeded=10, result_ttl=60)
    def report(payload: Any) -> None:
        return None

    handler = REGISTRY.get("t-retention-report")
    assert handler is not None and handler.retention == Retention(age=60, count=10)
    assert REGISTRY.retentions()["t-retention-report"].limits(Settings()) == (60_000, 10)
    with pytest.raises(ConfigError):
        @reliq.task("t-retention-bad", keep_succeeded=-1)
        def bad(payload: Any) -> None:
            return None


async def test_dead_tasks_are_never_trimmed(redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings.replace(keep_succeeded=1, result_ttl=0.05))
    dead = [i for i, _ in await queue.enqueue_specs([make_spec("noop", i) for i in range(3)])]
    tasks, _ = await queue.claim(W, 3)
    await queue.settle(W, [Outcome(t, "permanent", "no such invoice", 1) for t in tasks])
    await asyncio.sleep(0.1)
    ok = await run_ok(queue, 3)
    assert await redis.lrange(queue.keys.dead, 0, -1) == [i.encode() for i in reversed(dead)]
    assert all([(await queue.get(i))["state"] == "dead" for i in dead])
    assert [await redis.exists(queue.keys.task(i)) for i in ok] == [0, 0, 1]


async def test_a_list_over_its_limits_shrinks_back_a_bounded_amount_a_settle(redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings)
    await run_ok(queue, 20)
    lowered = Queue(redis, settings.replace(keep_succeeded=2))
    await run_ok(lowered, 1)  # one new record: at most 2 + 8 old ones go in this call
    assert await redis.llen(queue.keys.succeeded) == 21 - 10
    await run_ok(lowered, 1)
    assert await redis.llen(queue.keys.succeeded) == 2
    assert (await queue.snapshot())["trimmed"] == 20


async def test_a_quiet_queue_loses_records_past_their_age_too_and_counts_them(redis: Redis,
                                                                              settings: Settings) -> None:
    queue = Queue(redis, settings.replace(result_ttl=0.2))
    own = {"report": Retention(age=0.2, count=5)}
    noops = await run_ok(queue, 2)
    reports = await run_ok(queue, 2, "report", retention=own)
    await asyncio.sleep(0.3)  # nothing settles any more: the settle script trims nothing
    assert await SucceededTrimmer(queue, own, 1.0).run_once() == (0, 4)
    assert not any([await redis.exists(queue.keys.task(i)) for i in noops + reports])
    assert await keyspace(redis, queue.name) == {"format": "2", "workers": [W],
                                                 "stats": {"enqueued": "4", "succeeded": "4", "expired": "4"},
                                                 "metrics": (await keyspace(redis, queue.name))["metrics"]}
    assert await SucceededTrimmer(queue, own, 1.0).run_once() == (0, 0)
