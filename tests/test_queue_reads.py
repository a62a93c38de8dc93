"""The reads Queue gives the modules that once went to Redis themselves (#13 §1)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from reliq import queue_reads
from reliq.connection import connect
from reliq.queue import Queue, make_spec
from tests.util import payload_text


async def _enqueue(queue: Queue, n: int, **options: object) -> list[str]:
    specs = [make_spec("t", i, **options) for i in range(n)]  # type: ignore[arg-type]
    return [task_id for task_id, _ in await queue.enqueue_specs(specs)]


async def test_bulk_reads_cross_chunks_in_order(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven ids three a round trip: every record, state and field, in the order asked, '' for a gone one."""
    monkeypatch.setattr(queue_reads, "READ_CHUNK", 3)  # where the bulk reads look it up
    ids = await _enqueue(queue, 7)
    asked = [*ids[:4], "no-such-task", *ids[4:]]
    assert await queue.states(asked) == ["pending"] * 4 + [""] + ["pending"] * 3
    records = await queue.records(asked)
    assert [payload_text(r) for r in records] == ["0", "1", "2", "3", None, "4", "5", "6"]
    assert [row[0] for row in await queue.task_fields(asked, ["type"])] == [b"t"] * 4 + [None] + [b"t"] * 3
    assert sorted(await queue.task_ids()) == sorted(ids)


async def test_processing_backlog_and_workers(queue: Queue) -> None:
    ids = await _enqueue(queue, 3)
    [later] = await _enqueue(queue, 1, delay=60)
    assert await queue.backlog() == (3, 1)
    await queue.heartbeat("w1", {"concurrency": 1}, 10)
    claimed, _ = await queue.claim("w1", 2)
    assert [t.id for t in claimed] == ids[:2]
    assert sorted(await queue.processing_ids("w1")) == sorted(ids[:2])
    assert await queue.processing_lists() == {"w1": await queue.processing_ids("w1")}
    assert await queue.processing_ids("w2") == []
    assert await queue.worker_ids() == ["w1"]
    assert await queue.backlog() == (1, 1)
    assert later not in await queue.processing_ids("w1")


async def test_next_wake_returns_the_id_a_waited_task_ended_with(queue: Queue, redis_url: str) -> None:
    [task_id] = await _enqueue(queue, 1)
    blocking: Redis = connect(redis_url)
    try:
        assert await queue.next_wake("hub", 0.05, blocking) is None
        assert await queue.watch(task_id, "hub", 60_000) == "pending"
        waiting = asyncio.create_task(queue.next_wake("hub", 10, blocking))
        assert await queue.cancel(task_id) == "pending"
        assert await asyncio.wait_for(waiting, 10) == task_id
    finally:
        await blocking.aclose()
