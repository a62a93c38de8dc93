"""Sharing round trips between concurrent callers (reliq/coalescer.py), the API's enqueue path.

A controlled ``send`` lets each test decide when a round trip ends, so what goes together
is checked exactly, without timing; the last test sends to real Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from reliq.coalescer import Coalescer
from reliq.queue import Queue, make_spec
from reliq.scripts import source
from tests.flaky import Flaky


class _Send:
    """A ``send`` whose round trips end when the test says: results are the items times ten."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self._ends: list[asyncio.Future[None]] = []
        self._called = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        end = asyncio.get_running_loop().create_future()
        self._ends.append(end)
        self._called.set()
        await end
        return [i * 10 for i in items]

    async def in_flight(self, n: int) -> None:
        """Wait until the ``n``-th round trip has started."""
        while len(self.calls) < n:
            self._called.clear()
            await asyncio.wait_for(self._called.wait(), 10)

    def end(self, n: int, error: BaseException | None = None) -> None:
        """End the ``n``-th round trip (1-based), with ``error`` if given."""
        if error is None:
            self._ends[n - 1].set_result(None)
        else:
            self._ends[n - 1].set_exception(error)


async def _submitted(coalescer: Coalescer[int, int], items: Sequence[int]) -> list[asyncio.Task[int]]:
    tasks = [asyncio.create_task(coalescer.submit(i)) for i in items]
    await asyncio.sleep(0)  # one turn of the loop: each has handed in its item and waits
    return tasks


async def test_the_first_call_goes_alone_and_those_arriving_meanwhile_go_together_next() -> None:
    send = _Send()
    coalescer = Coalescer(send, max_batch=100)
    [first] = await _submitted(coalescer, [1])
    await send.in_flight(1)
    others = await _submitted(coalescer, [2, 3, 4])
    assert send.calls == [[1]]  # nobody waits for company

    send.end(1)
    assert await first == 10
    await send.in_flight(2)
    assert send.calls == [[1], [2, 3, 4]] and not any(t.done() for t in others)  # results only after Redis acted
    send.end(2)
    assert [await t for t in others] == [20, 30, 40]


async def test_a_round_trip_carries_at_most_max_batch_items() -> None:
    send = _Send()
    coalescer = Coalescer(send, max_batch=2)
    tasks = await _submitted(coalescer, [1])
    await send.in_flight(1)
    tasks += await _submitted(coalescer, [2, 3, 4, 5, 6])
    for n in range(1, 5):
        await send.in_flight(n)
        send.end(n)
    assert [await t for t in tasks] == [10, 20, 30, 40, 50, 60]
    assert send.calls == [[1], [2, 3], [4, 5], [6]]


async def test_a_failed_round_trip_fails_its_callers_only_and_the_next_one_still_goes() -> None:
    send = _Send()
    coalescer = Coalescer(send, max_batch=100)
    first = await _submitted(coalescer, [1, 2])
    await send.in_flight(1)
    later = await _submitted(coalescer, [3])
    send.end(1, ConnectionError("Redis went away"))
    for task in first:
        with pytest.raises(ConnectionError, match="Redis went away"):
            await task
    await send.in_flight(2)
    send.end(2)
    assert await later[0] == 30
    assert send.calls == [[1, 2], [3]]


async def test_a_caller_that_gives_up_waiting_leaves_the_others_their_results() -> None:
    send = _Send()
    coalescer = Coalescer(send, max_batch=100)
    impatient, patient = await _submitted(coalescer, [1, 2])
    await send.in_flight(1)
    impatient.cancel()
    send.end(1)
    assert await patient == 20
    assert impatient.cancelled()
    more = await _submitted(coalescer, [3])  # the coalescer is idle again: the next call goes at once
    await send.in_flight(2)
    send.end(2)
    assert await more[0] == 30


async def test_concurrent_enqueues_share_script_calls_and_every_task_lands(flaky: Flaky, queue: Queue) -> None:
    """As the API uses it: 50 producers at once, a handful of round trips, every id pending."""
    # Its scripts loaded beforehand, as on a server in use: the count below does not depend on
    # which tests ran before on the session's server (each NOSCRIPT would add a SCRIPT LOAD).
    for name in ("records", "enqueue"):
        await queue.redis.script_load(source(name))
    producer = Queue(flaky.client, queue.settings, name=queue.name)
    coalescer = Coalescer(producer.enqueue_specs, max_batch=100)
    results = await asyncio.gather(*[coalescer.submit(make_spec("noop", {"n": i})) for i in range(50)])
    ids = [task_id for task_id, created in results if created]
    assert len(set(ids)) == 50
    # The producer's first contact: the partition map (GET), the record format (records.lua, once:
    # docs/architecture.md, "Which format is written"), memory admission's first sample (INFO);
    # then the enqueues: the first alone, then the rest together.
    assert flaky.passed <= 5
    assert sorted(i.decode() for i in await queue.redis.lrange(queue.keys.pending, 0, -1)) == sorted(ids)
    for task_id, i in zip([r[0] for r in results], range(50), strict=True):
        assert (await queue.get(task_id))["payload"] == {"n": i}
