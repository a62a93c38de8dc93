"""Cancelling a running task and reporting progress, script by script (docs/cancel.md).

The scripts decide every end state atomically, so the races between a cancel and the
task's own end are played here deterministically: cancel, then settle each outcome.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from reliq.errors import CancelRefused
from reliq.formats import retries_of
from reliq.queue import Claimed, Queue, beat_of, heartbeat_call, text
from tests.keyspace import keyspace
from tests.test_scripts import W, claim_all, enqueue, outcome


async def running(queue: Queue, n: int = 1, **options: object) -> list[str]:
    """``n`` tasks claimed by W (registered by a beat), their ids."""
    ids = await enqueue(queue, n, **options)  # type: ignore[arg-type]
    await queue.heartbeat(W, {}, ttl_s=10)
    assert {t.id for t in await claim_all(queue)} == set(ids)
    return ids


async def beat_cancels(queue: Queue) -> tuple[str, ...]:
    """The cancel requests W's heartbeat reads back."""
    raw = await queue._scripts("heartbeat", *heartbeat_call(queue.name, W, {}, 10))
    return beat_of(raw).cancels


async def test_cancelling_a_running_task_asks_its_worker_by_message_and_by_heartbeat(
    queue: Queue, redis: Redis
) -> None:
    [a, b] = await running(queue, 2)
    pubsub = redis.pubsub()
    await pubsub.subscribe(queue.keys.cancel_channel(W))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert await queue.cancel(a) == "processing"
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    await pubsub.aclose()
    assert message is not None and text(message["data"]) == a
    assert await beat_cancels(queue) == (a,)
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "processing"  # until the worker has stopped it
    assert space[f"task:{a}"]["cancel"] == "keep" and space[f"task:{a}"]["cancel_requested_at"] == "T"
    assert "cancel" not in space[f"task:{b}"]
    assert space["cancels:" + W] == [a]
    assert (await queue.get(a))["cancel_requested_at"] is not None
    assert (await queue.get(b))["cancel_requested_at"] is None


async def test_the_worker_stopping_it_ends_it_cancelled_counted_never_retried(queue: Queue, redis: Redis) -> None:
    [a, b] = await running(queue, 2)
    await queue.cancel(a)
    await _settle(queue, {a: "cancelled", b: "ok"})
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "cancelled" and space[f"task:{a}"]["finished_at"] == "T"
    assert space[f"task:{b}"]["state"] == "succeeded"
    assert "cancels:" + W not in space and "processing:" + W not in space and "delayed" not in space
    assert space["stats"]["cancelled"] == space["stats"]["cancelled_running"] == "1"
    assert 0 < await redis.pttl(queue.keys.task(a)) <= queue.settings.result_ttl * 1000
    assert await beat_cancels(queue) == ()


async def _settle(queue: Queue, outcomes: dict[str, str], progressed: tuple[str, ...] = ()) -> None:
    """Settle W's tasks by id with the given outcome kinds (each task as claimed)."""
    records = await queue.records(list(outcomes))
    batch = []
    for (task_id, kind), f in zip(outcomes.items(), records, strict=True):
        # Counters are absent while 0 (record format 2); the retries are in the body.
        retries = retries_of(f)
        assert retries is not None, f
        task = Claimed(task_id, f["type"], b"null", int(f.get("attempts", 0)), int(f.get("failures", 0)), retries,
                       int(f.get("crashes", 0)), None, 0, 0, queue.name)
        batch.append(outcome(task, kind, "boom" if kind in ("error", "timeout", "permanent") else ""))
    assert await queue.settle(W, batch, progressed=progressed) == (len(batch), 0)


@pytest.mark.parametrize("kind", ["error", "timeout", "permanent"])
async def test_a_cancel_then_the_handler_failing_ends_cancelled_not_retried_nor_dead(
    queue: Queue, redis: Redis, kind: str
) -> None:
    """The race: the cancel lands, then the attempt ends by itself before the worker stopped it."""
    [a] = await running(queue)
    await queue.cancel(a)
    await _settle(queue, {a: kind})
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "cancelled"
    assert "delayed" not in space and "dead" not in space and "cancels:" + W not in space
    assert space["stats"]["cancelled_running"] == "1" and "retried" not in space["stats"]


async def test_a_cancel_then_the_handler_succeeding_keeps_the_success(queue: Queue, redis: Redis) -> None:
    """It finished before its worker could stop it: its effects happened, so the record says so."""
    [a] = await running(queue)
    await queue.cancel(a)
    await _settle(queue, {a: "ok"})
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "succeeded"
    assert "cancel" not in space[f"task:{a}"] and "cancel_requested_at" not in space[f"task:{a}"]
    assert "cancels:" + W not in space and "cancelled" not in space["stats"]
    with pytest.raises(CancelRefused):  # and now there is nothing left to cancel
        await queue.cancel(a)


async def test_the_end_settled_first_then_the_cancel_is_refused_or_immediate(queue: Queue, redis: Redis) -> None:
    [done, failing] = await running(queue, 2)
    await _settle(queue, {done: "ok", failing: "error"})
    with pytest.raises(CancelRefused):
        await queue.cancel(done)
    assert await queue.cancel(failing) == "retrying"  # waiting for its retry: cancelled at once
    space = await keyspace(redis, queue.name)
    assert space[f"task:{failing}"]["state"] == "cancelled" and "delayed" not in space
    assert space["stats"]["cancelled"] == "1" and "cancelled_running" not in space["stats"]


async def test_delete_of_a_running_task_deletes_it_with_its_idempotency_key_once_stopped(
    queue: Queue, redis: Redis
) -> None:
    [a] = await running(queue, idempotency_key="k1")
    assert await queue.cancel(a, forget=True) == "processing"
    assert await queue.cancel(a) == "processing"  # a later POST cancel does not undo the DELETE
    assert (await keyspace(redis, queue.name))[f"task:{a}"]["cancel"] == "forget"
    await _settle(queue, {a: "cancelled"})
    space = await keyspace(redis, queue.name)
    assert f"task:{a}" not in space and "idem:k1" not in space
    assert space["stats"]["cancelled_running"] == "1"


async def test_a_delete_after_a_cancel_still_deletes(queue: Queue, redis: Redis) -> None:
    [a] = await running(queue)
    await queue.cancel(a)
    await queue.cancel(a, forget=True)
    await _settle(queue, {a: "error"})
    assert f"task:{a}" not in await keyspace(redis, queue.name)


async def test_a_dead_worker_asked_to_cancel_a_task_ends_it_cancelled_and_requeues_the_rest(
    queue: Queue, redis: Redis
) -> None:
    [a, b] = await running(queue, 2)
    await queue.cancel(a)
    assert await queue.reap(W, lease_s=0) == (1, 0, 1)
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "cancelled" and "crashes" not in space[f"task:{a}"]  # none counted
    assert space[f"task:{b}"]["state"] == "pending" and space["pending"] == [b]
    assert "cancels:" + W not in space
    assert space["stats"]["cancelled_running"] == "1" and space["stats"]["recovered"] == "1"


async def test_a_worker_stopping_hands_back_its_tasks_but_ends_the_cancelled_one(queue: Queue, redis: Redis) -> None:
    [a, b] = await running(queue, 2)
    await queue.cancel(a)
    assert await queue.release(W) == 1
    space = await keyspace(redis, queue.name)
    assert space[f"task:{a}"]["state"] == "cancelled" and space["pending"] == [b]
    assert "cancels:" + W not in space and space["stats"]["cancelled_running"] == "1"


async def test_progress_is_written_while_the_task_runs_on_its_worker_only(queue: Queue, redis: Redis) -> None:
    [a, b] = await running(queue, 2)
    assert await queue.progress(W, [(a, 0.42, "42 of 100 rows"), (b, 1 / 3, "")]) == 2
    info = await queue.get(a)
    assert (info["progress"], info["progress_message"]) == (0.42, "42 of 100 rows") and info["progress_at"]
    assert (await queue.get(b))["progress"] == pytest.approx(1 / 3, abs=1e-5)
    assert await queue.progress("another-worker", [(a, 0.5, "")]) == 0  # reclaimed from it: not its task
    await _settle(queue, {a: "error"}, progressed=(a,))  # waits for a retry: the next attempt reports anew
    retrying = await queue.get(a)
    assert retrying["progress"] is retrying["progress_message"] is retrying["progress_at"] is None
    assert await queue.progress(W, [(a, 0.9, "late")]) == 0  # a late report after the end writes nothing
    assert (await queue.get(a))["progress"] is None


async def test_the_cancel_message_reaches_only_the_worker_holding_the_task(queue: Queue, redis: Redis) -> None:
    [a] = await running(queue)
    other = redis.pubsub()
    await other.subscribe(queue.keys.cancel_channel("w2"))
    await other.get_message(timeout=1)
    await queue.cancel(a)
    assert await other.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await other.aclose()


async def test_a_success_named_as_progressed_keeps_a_compact_record(queue: Queue, redis: Redis) -> None:
    """Only the tasks the worker says reported progress pay for dropping it (settle's ARGV)."""
    [a, b] = await running(queue, 2)
    await queue.progress(W, [(a, 0.5, "half"), (b, 0.5, "half")])
    claimed = [Claimed(i, "noop", b"null", 1, 0, 3, 0, None, 0, 0, queue.name) for i in (a, b)]
    assert await queue.settle(W, [outcome(t) for t in claimed], progressed=[a, b]) == (2, 0)
    space = await keyspace(redis, queue.name)
    for task_id in (a, b):
        assert not {"progress", "progress_message", "progress_at"} & set(space[f"task:{task_id}"])
        assert space[f"task:{task_id}"]["state"] == "succeeded"
