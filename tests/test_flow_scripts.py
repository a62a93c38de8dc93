"""Flow control in the scripts (issue 14 §1, §2): rate limits, keys, holds, slots, one call at a time.

Real Redis, the scripts called through Queue as a worker calls them; what whole worker
processes do with them is tested in tests/test_flow.py.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from reliq import priorities
from reliq.keys import group_id
from reliq.queue import Claimed, Outcome, Queue, make_spec
from reliq.settings import Settings
from reliq.worker.fetcher import Fetcher
from tests.flaky import Flaky
from tests.util import move_in, ready_nudges


async def enqueue(queue: Queue, type_: str, n: int, key: str | None = None, **options: object) -> list[str]:
    specs = [make_spec(type_, i, key=key, **options) for i in range(n)]
    return [i for i, _ in await queue.enqueue_specs(specs)]


async def groups(redis: Redis, queue: Queue) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(queue.keys.groups)).items()}


def ok(tasks: list[Claimed]) -> list[Outcome]:
    return [Outcome(t, "ok", "", 1) for t in tasks]


async def test_a_rate_limit_lets_one_task_through_a_token_and_sets_the_rest_aside_once(
    queue: Queue, redis: Redis
) -> None:
    await queue.set_limits("rated", {"rate": [10, 1000, 1]})  # one every 100 ms, strictly (burst 1)
    rated = await enqueue(queue, "rated", 5)
    plain = await enqueue(queue, "plain", 5)
    take = await queue.take("w1", 20)
    # The limited type does not hold back the other: all of it, and one of the limited.
    assert [t.id for t in take.tasks] == [rated[0], *plain]
    assert 0.05 < take.wait_s <= 0.1  # told when the next token is due
    assert [i.decode() for i in await redis.lrange(queue.keys.limited("rated"), 0, -1)] == rated[:0:-1]
    assert await redis.llen(queue.keys.pending) == 0  # each set aside once, not left to be met again
    snap = await queue.snapshot()
    assert (snap["pending"], snap["limited"]) == (4, 4)
    assert (await queue.limits())["rated"]["limited"] == 4
    assert (await queue.take("w1", 20)).tasks == []  # no token yet
    got: list[str] = []
    while len(got) < 4:
        take = await queue.take("w1", 20)
        got += [t.id for t in take.tasks]
        assert len(take.tasks) <= 1
        if take.wait_s:
            await asyncio.sleep(take.wait_s)
    assert got == rated[1:]  # in their order
    assert not await redis.exists(queue.keys.limited("rated"), queue.keys.limited_due)


async def test_a_burst_lets_that_many_through_at_once_then_the_rate(queue: Queue) -> None:
    await queue.set_limits("rated", {"rate": [10, 1000, 3]})
    await enqueue(queue, "rated", 6)
    assert len((await queue.take("w1", 10)).tasks) == 3
    assert len((await queue.take("w1", 10)).tasks) == 0


async def test_keys_take_turns_and_a_busy_key_waits_without_holding_back_others(queue: Queue, redis: Redis) -> None:
    await queue.set_limits("k", {"key_concurrency": 2})
    a = await enqueue(queue, "k", 5, key="A")
    b = await enqueue(queue, "k", 5, key="B")
    plain = await enqueue(queue, "p", 2)
    snap = await queue.snapshot()
    assert (snap["pending"], snap["keyed"]) == (12, 10)
    take = await queue.take("w1", 10)
    assert [t.id for t in take.tasks] == [a[0], b[0], a[1], b[1], *plain]  # A, B, A, B: then both at 2
    assert {t.key for t in take.tasks} == {"A", "B", ""}
    g = await groups(redis, queue)
    assert (g[f"a:{group_id('k', 'A')}"], g[f"a:{group_id('k', 'B')}"], g["ready"]) == ("2", "2", "6")
    assert await redis.llen(queue.keys.ring) == 0  # both at their concurrency: off the ring
    assert (await queue.take("w1", 10)).tasks == []
    await queue.settle("w1", ok(take.tasks[:1]))  # one of A done: A gets a turn again
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == [a[2]]


async def test_the_reaper_gives_a_dead_workers_slots_back_and_its_tasks_to_the_head_of_their_key(
    queue: Queue, redis: Redis
) -> None:
    await queue.set_limits("k", {"key_concurrency": 1})
    a = await enqueue(queue, "k", 3, key="A")
    [first] = (await queue.take("w1", 10)).tasks
    assert first.id == a[0]
    assert await queue.reap("w1", 0.0) == (1, 0, 0)
    g = await groups(redis, queue)
    assert f"a:{group_id('k', 'A')}" not in g and g["ready"] == "3"
    assert [t.id for t in (await queue.take("w2", 10)).tasks] == [a[0]]  # first again, not after the others


async def test_an_ordered_keys_retry_keeps_its_slot_and_runs_before_later_tasks(queue: Queue, redis: Redis) -> None:
    await queue.set_limits("o", {"key_concurrency": 1, "ordered": True})
    a = await enqueue(queue, "o", 3, key="A")
    [first] = (await queue.take("w1", 10)).tasks
    await queue.settle("w1", [Outcome(first, "error", "boom", 1, retry_delay_ms=30)])
    assert (await redis.hget(queue.keys.task(a[0]), "slot")) == b"1"
    assert (await queue.take("w1", 10)).tasks == []  # the key's slot is the retry's
    await asyncio.sleep(0.05)
    assert await queue.promote() == 1
    [again] = (await queue.take("w1", 10)).tasks
    assert (again.id, again.attempts) == (a[0], 2)
    await queue.settle("w1", ok([again]))
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == [a[1]]


async def test_an_unordered_keys_retry_frees_its_slot_and_goes_to_the_back(queue: Queue) -> None:
    await queue.set_limits("k", {"key_concurrency": 1})
    a = await enqueue(queue, "k", 2, key="A")
    [first] = (await queue.take("w1", 10)).tasks
    await queue.settle("w1", [Outcome(first, "error", "boom", 1, retry_delay_ms=0)])
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == [a[1]]


async def test_rate_limited_holds_the_type_without_spending_an_attempt(queue: Queue, redis: Redis) -> None:
    first, second = await enqueue(queue, "t", 2, max_retries=0)
    take = await queue.take("w1", 1)
    await queue.settle("w1", [Outcome(take.tasks[0], "rate_limited", "429", 1, retry_delay_ms=300)])
    record = await queue.get(first)
    assert (record["state"], record["attempts"], record["failures"]) == ("pending", 0, 0)
    take = await queue.take("w1", 10)
    assert take.tasks == [] and 0.2 < take.wait_s <= 0.3  # the type is held, its next task too
    snap = await queue.snapshot()
    assert (snap["rate_limited"], snap["failed"], snap["limited"], snap["pending"]) == (1, 0, 2, 2)
    await asyncio.sleep(take.wait_s)
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == [first, second]  # the refused one first


async def test_rate_limited_holds_only_the_key_of_a_keyed_task(queue: Queue, redis: Redis) -> None:
    a = await enqueue(queue, "k", 2, key="A")
    b = await enqueue(queue, "k", 1, key="B")
    take = await queue.take("w1", 1)
    assert take.tasks[0].id == a[0]
    await queue.settle("w1", [Outcome(take.tasks[0], "rate_limited", "429", 1, retry_delay_ms=300)])
    take = await queue.take("w1", 10)
    assert [t.id for t in take.tasks] == b and 0.2 < take.wait_s <= 0.3
    await asyncio.sleep(take.wait_s)
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == a
    assert (await queue.get(a[0]))["attempts"] == 1


async def test_cancel_release_and_dead_letters_give_slots_back(queue: Queue, redis: Redis) -> None:
    await queue.set_limits("k", {"key_concurrency": 2, "ordered": None})
    a = await enqueue(queue, "k", 4, key="A")
    take = await queue.take("w1", 2)
    await queue.settle("w1", [Outcome(take.tasks[0], "permanent", "no", 1)])
    assert await queue.cancel(a[3]) == "pending"
    assert await queue.release("w1") == 1
    g = await groups(redis, queue)
    assert not [f for f in g if f.startswith("a:")] and g["ready"] == "2"
    assert [t.id for t in (await queue.take("w2", 10)).tasks] == [a[1], a[2]]
    assert await queue.dead_requeue(ids=[a[0]]) == 1
    assert [t.id for t in (await queue.take("w2", 10)).tasks] == []  # at its concurrency
    assert (await queue.snapshot())["keyed"] == 1


async def test_a_paused_types_keys_are_held_and_come_back_on_resume(queue: Queue, redis: Redis) -> None:
    a = await enqueue(queue, "k", 2, key="A")
    await queue.pause("k", "test")
    assert (await queue.take("w1", 10)).tasks == []
    assert await redis.llen(queue.keys.held("k")) == 1  # the key's marker, not its tasks
    assert (await queue.snapshot())["pending"] == 2
    await queue.resume("k")
    assert [t.id for t in (await queue.take("w1", 10)).tasks] == a


async def test_a_keyed_task_nudges_idle_workers(queue: Queue) -> None:
    async with ready_nudges(queue) as heard:
        [task_id] = await enqueue(queue, "k", 1, key="A")
        assert await heard(0.5) == [""]
        assert await move_in(queue, "w1") == priorities.WAKE  # the wake mark, not a task
        take = await queue.take("w1", 10, priorities.WAKE)
        assert [t.id for t in take.tasks] == [task_id]
        assert (await queue.snapshot())["pending"] == 0


async def test_a_running_keyed_task_cancelled_gives_its_slot_back_settled_or_reaped(queue: Queue, redis: Redis) -> None:
    await queue.set_limits("k", {"key_concurrency": 1})
    a = await enqueue(queue, "k", 3, key="A")
    [first] = (await queue.take("w1", 10)).tasks
    await queue.cancel(first.id)  # running: its worker is asked to stop it
    await queue.settle("w1", [Outcome(first, "cancelled", "", 1)])
    assert (await queue.get(first.id))["state"] == "cancelled"
    [second] = (await queue.take("w1", 10)).tasks  # the key's one slot is free again
    assert second.id == a[1]
    await queue.cancel(second.id)
    assert await queue.reap("w1", 0.0) == (0, 0, 1)  # its worker died: cancelled, slot given back
    g = await groups(redis, queue)
    assert not [f for f in g if f.startswith("a:")] and g["ready"] == "1"
    assert [t.id for t in (await queue.take("w2", 10)).tasks] == [a[2]]


@pytest.mark.serial
async def test_a_late_claim_still_gets_the_tokens_its_backlog_was_due_but_not_after_a_hold(queue: Queue) -> None:
    await queue.set_limits("rated", {"rate": [50, 1000, 0]})  # one every 20 ms, 100 ms of it at once
    await enqueue(queue, "rated", 80)
    assert len((await queue.take("w1", 100)).tasks) == 6  # the default burst: 0, 20, ..., 100 ms
    await asyncio.sleep(0.5)  # the workers were late (a busy host): the tokens waited for them
    late = await queue.take("w1", 100)
    assert 20 <= len(late.tasks) <= 27  # 25 for the 500 ms, the rate kept over time
    # A type held by RateLimited starts again at its rate when the hold ends, with no catching up.
    await queue.settle("w1", [Outcome(late.tasks[0], "rate_limited", "429", 1, retry_delay_ms=300)])
    hold_end = (await queue.task_fields([late.tasks[0].id], ["queued_at"]))[0][0]
    await asyncio.sleep(0.45)
    after = (await queue.take("w1", 100)).tasks
    since_ms = after[0].started_at - (int(hold_end or 0) + 300)
    assert len(after) <= since_ms / 20 + 6 + 1  # its rate from the hold's end (and its burst), not before


async def keyed_queue(flaky: Flaky, settings: Settings, concurrency: int) -> tuple[Queue, Fetcher]:
    """A queue on the flaky client whose type k has that key concurrency, and worker w1's fetcher."""
    queue = Queue(flaky.client, settings)
    await queue.set_limits("k", {"key_concurrency": concurrency})
    return queue, Fetcher([(queue, 1)], "w1")


async def lose_claim(flaky: Flaky, fetcher: Fetcher) -> None:
    """A claim that runs in Redis and whose reply is lost: the worker's call raises."""
    flaky.lose_next(1, script="claim")
    with pytest.raises(RedisConnectionError):
        await fetcher.claim(10, 0)


async def test_keyed_tasks_a_lost_claim_reply_gave_a_worker_are_adopted_with_their_key_and_give_their_slots_back(
    flaky: Flaky, settings: Settings, redis: Redis
) -> None:
    # A claim ran, its reply was lost (the connection cut after the script): the worker
    # finds the ids in its list, adopts them, runs and settles them. Each gives its key's
    # slot back, so that every task of the key runs.
    queue, fetcher = await keyed_queue(flaky, settings, 2)
    a = await enqueue(queue, "k", 6, key="A")
    done: list[str] = []
    while len(done) < len(a):
        await lose_claim(flaky, fetcher)
        adopted = await fetcher.adopt_orphans(set(), 0)
        assert sorted(t.id for t in adopted) == a[len(done):len(done) + 2]  # the key's two slots, in order
        assert {t.key for t in adopted} == {"A"}
        assert {t.attempts for t in adopted} == {1}  # the lost claim's attempt, not counted again
        assert (await queue.settle("w1", ok(adopted)))[0] == 2
        done += [t.id for t in adopted]
    assert [((await queue.get(i))["state"], (await queue.get(i))["attempts"]) for i in a] == [("succeeded", 1)] * len(a)
    g = await groups(redis, queue)
    assert not [f for f in g if f.startswith("a:")] and g["ready"] == "0"  # no slot left taken


async def test_a_keyed_crash_suspect_a_lost_reply_gave_a_busy_worker_goes_back_to_its_key_and_runs_alone(
    flaky: Flaky, settings: Settings, redis: Redis
) -> None:
    queue, fetcher = await keyed_queue(flaky, settings, 1)
    a = await enqueue(queue, "k", 2, key="A")
    [first] = (await queue.take("w0", 10)).tasks
    assert await queue.reap("w0", 0.0) is not None  # its worker died: a crash suspect, at the head of A
    await lose_claim(flaky, fetcher)  # claimed it, alone; the reply lost
    plain = await enqueue(queue, "p", 1)
    [p] = (await queue.take("w1", 10)).tasks  # the worker, not knowing, claims more
    assert p.id == plain[0]
    # Adopted now it would not run alone: it goes back to the head of its key, pending, its
    # slot and its attempt given back.
    assert await fetcher.adopt_orphans({p.id}, 1) == []
    info = await queue.get(first.id)
    assert (info["state"], info["attempts"]) == ("pending", 1)
    assert [i.decode() for i in await redis.lrange(queue.keys.group("k", "A"), 0, -1)] == [a[1], first.id]
    g = await groups(redis, queue)
    assert not [f for f in g if f.startswith("a:")] and g["ready"] == "2"
    assert await redis.lrange(queue.keys.pending, 0, -1) == [priorities.WAKE.encode()]  # its key's wake-up, no id
    assert (await queue.settle("w1", ok([p])))[0] == 1
    for want in a:  # then each runs, the suspect alone and first
        [t] = (await queue.take("w1", 10)).tasks
        assert (t.id, t.key) == (want, "A")
        assert (await queue.settle("w1", ok([t])))[0] == 1
    assert [(await queue.get(i))["state"] for i in a] == ["succeeded"] * 2
    g = await groups(redis, queue)
    assert not [f for f in g if f.startswith("a:")] and g["ready"] == "0"
