"""The batched forms of enqueue, claim and settle (one JSON argument, one call a batch) keep
every task's bytes and counts exact, whatever the batch holds."""

from __future__ import annotations

import asyncio

import orjson
from redis.asyncio import Redis

from reliq.formats import make_body, retries_of
from reliq.queue import Outcome, Queue, make_spec
from reliq.registry import Registry
from reliq.settings import Settings
from reliq.worker import Worker
from tests.util import stored_payload

W = "w1"
ODD = ["é ü 中文 🚀", 'quote " backslash \\ slash /', "nul \u0000 and tab \t", "", "x" * 5000]


async def test_enqueue_keeps_payloads_byte_for_byte(queue: Queue, redis: Redis) -> None:
    specs = [make_spec("noop", {"s": s, "n": [1, 2.5, None, True]}) for s in ODD]
    done = await queue.enqueue_specs(specs)
    for spec, (task_id, created) in zip(specs, done, strict=True):
        assert created and task_id == spec.id
        assert stored_payload(await redis.hgetall(queue.keys.task(task_id))) == spec.payload
        assert (await queue.get(task_id))["payload"]["s"] in ODD


async def test_enqueue_pushes_a_batch_in_order_and_keeps_idempotency_within_it(queue: Queue, redis: Redis) -> None:
    specs = [make_spec("noop", i) for i in range(1500)]  # more than one LPUSH slice
    specs += [make_spec("noop", "a", idempotency_key="k"), make_spec("noop", "b", idempotency_key="k"),
              make_spec("noop", None, delay=60, max_retries=7, timeout=1.5)]
    done = await queue.enqueue_specs(specs)
    assert done[1500] == (specs[1500].id, True) and done[1501] == (specs[1500].id, False)
    pending = [i.decode() for i in await redis.lrange(queue.keys.pending, 0, -1)]
    assert pending == [s.id for s in reversed(specs[:1501])]  # newest at the left, as one LPUSH each
    scheduled = await redis.hgetall(queue.keys.task(specs[-1].id))
    # Its body's opts (formats.OPTS_FIELDS) hold its retries and timeout; the monitor reads the retries there.
    assert (scheduled[b"state"], scheduled[b"body"]) == (b"scheduled", make_body("7|1500||", b"null"))
    assert retries_of({k.decode(): v for k, v in scheduled.items()}) == 7
    assert (await queue.snapshot())["enqueued"] == 1502


async def test_claim_takes_from_the_tail_in_order_and_skips_cancelled(queue: Queue, redis: Redis) -> None:
    ids = [task_id for task_id, _ in await queue.enqueue_specs([make_spec("noop", i) for i in range(10)])]
    await queue.cancel(ids[1])
    tasks, blocked = await queue.claim(W, 4)
    assert not blocked and [t.id for t in tasks] == [ids[0], ids[2], ids[3], ids[4]]
    assert [i.decode() for i in await redis.lrange(queue.keys.processing(W), 0, -1)] == [ids[4], ids[3], ids[2], ids[0]]
    assert [i.decode() for i in await redis.lrange(queue.keys.pending, 0, -1)] == list(reversed(ids[5:]))
    rest, _ = await queue.claim(W, 100)
    assert [t.id for t in rest] == ids[5:] and await redis.llen(queue.keys.pending) == 0


async def test_settle_sums_metrics_and_counters_over_the_batch(queue: Queue, redis: Redis) -> None:
    await queue.enqueue_specs([make_spec("noop", i) for i in range(6)] + [make_spec("other", 0)])
    tasks, _ = await queue.claim(W, 10)
    outcomes = [Outcome(t, "ok" if t.type == "noop" else "permanent", ODD[i % len(ODD)], run_ms=i)
                for i, t in enumerate(tasks)]
    assert await queue.settle(W, outcomes) == (7, 0)
    metrics = {k.decode(): int(v) for k, v in (await redis.hgetall(queue.keys.metrics)).items()}
    assert metrics["t|noop|ok"] == 6 and metrics["t|other|permanent"] == 1
    assert metrics["rs|noop"] == sum(range(6))
    assert sum(v for k, v in metrics.items() if k.startswith("r|noop|")) == 6
    snap = await queue.snapshot()
    assert (snap["succeeded"], snap["failed"], snap["dead"]) == (6, 1, 1)
    for o in outcomes[:6]:  # a handler that returned nothing ('') leaves no result field (format 2)
        assert await redis.hget(queue.keys.task(o.task.id), "result") == (o.text.encode() or None)


async def test_an_error_text_that_is_not_valid_unicode_is_settled_not_stuck(queue: Queue, settings: Settings) -> None:
    registry = Registry()

    async def broken(payload: object) -> None:
        raise RuntimeError("bad bytes: " + b"\xff".decode("utf-8", "surrogateescape"))

    registry.add("broken", broken)
    task_id = await queue.enqueue("broken", None, max_retries=0)
    await asyncio.wait_for(Worker(queue, settings, registry, burst=True).run(), 10)
    info = await queue.get(task_id)
    assert info["state"] == "dead" and info["last_error"] and "bad bytes" in info["last_error"]
    assert orjson.dumps(info)  # the stored text is valid UTF-8
