"""Each script's transition, checked against the whole keyspace of its queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from reliq.formats import Enqueued, make_body
from reliq.queue import Claimed, Outcome, Queue, make_spec
from reliq.settings import Settings
from tests.keyspace import keyspace, run
from tests.util import move_in

W = "w1"


#: What the queue's fixture holds besides its tasks' keys from the first call: its record
#: format, decided by records.lua (a new queue: format 2, formats.RecordFormat.BODY).
FORMAT = {"format": "2"}


def record(type: str = "noop", state: str = "pending", body: str = "4:3|||null", **fields: Any) -> dict[str, Any]:
    """The task hash as the keyspace reads it (times masked as "T"): record format 2 as enqueue.lua's
    plain path writes it, one ``body`` (formats.make_body: opts ``3|||``, payload ``null``), no
    attempts, failures, crashes while 0, and no enqueued_at (its queued_at stands for it)."""
    base = {"type": type, "body": body, "state": state}
    if state != "scheduled":
        base["queued_at"] = "T"
    base.update({k: v if k == "runs" else str(v) for k, v in fields.items()})
    return base


async def enqueue(queue: Queue, n: int = 1, type: str = "noop", **options: Any) -> list[str]:
    specs = [make_spec(type, None, **options) for _ in range(n)]
    return [task_id for task_id, _ in await queue.enqueue_specs(specs)]


async def claim_all(queue: Queue, n: int = 100) -> list[Claimed]:
    tasks, blocked = await queue.claim(W, n)
    assert not blocked
    return tasks


def outcome(task: Claimed, kind: str = "ok", text: str = "", delay_ms: int = 0) -> Outcome:
    return Outcome(task, kind, text, run_ms=3, retry_delay_ms=delay_ms)


async def test_enqueue_writes_record_pending_and_counter(queue: Queue, redis: Redis) -> None:
    [a, b] = await enqueue(queue, 2)
    assert await keyspace(redis, queue.name) == {
        **FORMAT,
        "pending": [b, a],
        "stats": {"enqueued": "2"},
        f"task:{a}": record(),
        f"task:{b}": record(),
    }


async def test_enqueue_with_delay_schedules_in_delayed_set(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue, delay=60)
    space = await keyspace(redis, queue.name)
    assert space["delayed"] == [a]
    assert "pending" not in space
    assert space[f"task:{a}"]["state"] == "scheduled"


async def test_enqueue_same_idempotency_key_creates_one_task(queue: Queue, redis: Redis) -> None:
    first = await queue.enqueue_specs([make_spec("noop", 1, idempotency_key="k")])
    second = await queue.enqueue_specs([make_spec("noop", 2, idempotency_key="k")])
    assert second == [(first[0][0], Enqueued.REPEATED)] and first[0][1] == Enqueued.CREATED
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [first[0][0]] and space["idem:k"] == first[0][0]
    assert space["stats"] == {"enqueued": "1"}


async def test_claim_moves_batch_into_worker_list_and_marks_processing(queue: Queue, redis: Redis) -> None:
    [a, b, c] = await enqueue(queue, 3)
    tasks = await claim_all(queue, 2)
    assert [t.id for t in tasks] == [a, b]
    assert all(t.attempts == 1 and t.started_at >= t.queued_at for t in tasks)
    assert await keyspace(redis, queue.name) == {
        **FORMAT,
        "pending": [c],
        "processing:" + W: [b, a],
        "workers": [W],  # a claim (re)registers its worker, so a reaper will find its list
        "stats": {"enqueued": "3"},
        f"task:{a}": record(state="processing", attempts=1, started_at="T", worker=W),
        f"task:{b}": record(state="processing", attempts=1, started_at="T", worker=W),
        f"task:{c}": record(),
    }


async def test_claim_drops_ids_whose_record_is_not_pending(queue: Queue, redis: Redis) -> None:
    [a, b] = await enqueue(queue, 2)
    await redis.hset(queue.keys.task(a), "state", "cancelled")
    assert [t.id for t in await claim_all(queue)] == [b]
    assert (await keyspace(redis, queue.name))["processing:" + W] == [b]


async def test_a_moved_id_is_claimed_first(queue: Queue, redis: Redis) -> None:
    [a, b] = await enqueue(queue, 2)
    assert await move_in(queue, W) == a
    tasks, _ = await queue.claim(W, 5, a)
    assert [t.id for t in tasks] == [a, b]


async def test_settle_ok_leaves_a_compact_record_kept_in_the_succeeded_list(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    assert await queue.settle(W, [outcome(task, "ok", '{"x":1}')]) == (1, 0)
    space = await keyspace(redis, queue.name)
    assert space == {
        **FORMAT,
        "workers": [W],
        "succeeded": [a],  # retention by count and age, instead of a TTL a record
        "stats": {"enqueued": "1", "succeeded": "1"},
        "metrics": space["metrics"],
        # No payload nor opts: the HSET that marks it succeeded blanks its body (format 2, one
        # command); no failures nor crashes (absent while 0), no enqueued_at (queued_at stands for it).
        f"task:{a}": {"type": "noop", "state": "succeeded", "body": "", "attempts": "1", "queued_at": "T",
                      "started_at": "T", "worker": W, "finished_at": "T", "result": '{"x":1}'},
    }
    assert space["metrics"]["t|noop|ok"] == "1" and space["metrics"]["rs|noop"] == "3"
    assert await redis.pttl(queue.keys.task(a)) == -1


async def test_settle_error_schedules_retry_in_delayed_set(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task, "error", "boom", delay_ms=60_000)])
    space = await keyspace(redis, queue.name)
    assert space["delayed"] == [a]
    assert space["stats"] == {"enqueued": "1", "failed": "1", "retried": "1"}
    assert space[f"task:{a}"] == record(state="retrying", attempts=1, failures=1, started_at="T", worker=W,
                                        last_error="boom", runs=[run(1, "error", "retrying")])
    score = await redis.zscore(queue.keys.delayed, a)
    now_s, _ = await redis.time()
    assert score is not None and 59_000 < score - now_s * 1000 <= 61_000


async def test_settle_snooze_schedules_the_task_again_with_its_attempt_given_back(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task, "snooze", "snoozed for 60s", delay_ms=60_000)])
    space = await keyspace(redis, queue.name)
    assert space == {
        **FORMAT,
        "delayed": [a],
        "workers": [W],
        "stats": {"enqueued": "1", "snoozed": "1"},
        "metrics": space["metrics"],
        f"task:{a}": record(state="scheduled", queued_at="T", attempts=0, started_at="T", worker=W,
                            runs=[run(1, "snooze", "scheduled", "snoozed for 60s")]),
    }
    assert space["metrics"]["t|noop|snooze"] == "1"
    score = await redis.zscore(queue.keys.delayed, a)
    now_s, _ = await redis.time()
    assert score is not None and 59_000 < score - now_s * 1000 <= 61_000


async def test_enqueue_takes_a_types_max_retries_from_the_types_hash_unless_given(queue: Queue,
                                                                                 redis: Redis) -> None:
    await queue.set_type_defaults({"patient": b'{"max_retries":9}'}, [])
    [a] = await enqueue(queue, type="patient")
    [b] = await enqueue(queue, type="patient", max_retries=1)
    [c] = await enqueue(queue, type="noop")
    space = await keyspace(redis, queue.name)
    assert space["types"] == {"patient": '{"max_retries":9}'}
    # Each body's opts (formats.OPTS_FIELDS) holds the retries as resolved.
    assert [space[f"task:{i}"]["body"] for i in (a, b, c)] == [make_body(f"{n}|||", b"null").decode()
                                                               for n in (9, 1, 3)]
    await queue.set_type_defaults({}, ["patient"])
    assert "types" not in await keyspace(redis, queue.name)  # no type has defaults: no hash, one EXISTS a call


async def test_settle_error_after_last_retry_dead_letters_with_reason(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue, max_retries=0)
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task, "timeout", "timed out after 1s")])
    space = await keyspace(redis, queue.name)
    assert space["dead"] == [a]
    assert space["stats"] == {"enqueued": "1", "failed": "1", "dead": "1"}
    # max_retries given: enqueue.lua's general path, which writes enqueued_at.
    assert space[f"task:{a}"] == record(state="dead", body="4:0|||null", enqueued_at="T", attempts=1, failures=1,
                                        started_at="T", worker=W, finished_at="T", reason="timeout",
                                        last_error="timed out after 1s",
                                        runs=[run(1, "timeout", "dead", "timed out after 1s")])


@pytest.mark.parametrize("kind", ["permanent", "unknown_type"])
async def test_settle_permanent_failures_dead_letter_at_once(queue: Queue, redis: Redis, kind: str) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task, kind, "nope")])
    space = await keyspace(redis, queue.name)
    assert space["dead"] == [a] and "delayed" not in space
    assert space[f"task:{a}"]["reason"] == kind


async def test_dead_letter_list_has_no_cap_by_default(queue: Queue, redis: Redis) -> None:
    ids = await enqueue(queue, 5, max_retries=0)
    for task in await claim_all(queue):
        await queue.settle(W, [outcome(task, "error", "x")])
    assert await queue.dead_trim() == ([], [])
    space = await keyspace(redis, queue.name)
    assert space["dead"] == ids[::-1] and "dead-archive" not in space


async def test_dead_trim_archives_the_oldest_past_the_cap_before_deleting_them(redis: Redis,
                                                                               settings: Settings) -> None:
    queue = Queue(redis, settings.replace(dead_cap=2, dead_archive_cap=2))
    ids = await enqueue(queue, 5, max_retries=0)
    for task in await claim_all(queue):
        await queue.settle(W, [outcome(task, "error", f"boom {task.id}")])
    # Settling never drops anything: the list is over its cap until the trimmer runs.
    assert (await keyspace(redis, queue.name))["dead"] == ids[::-1]
    evicted, dropped = await queue.dead_trim()
    assert evicted == ids[:3]  # the oldest three, oldest first
    assert dropped == ids[:1]  # the archive keeps two: the first evicted fell off it, counted
    space = await keyspace(redis, queue.name)
    assert space["dead"] == [ids[4], ids[3]]
    assert not any(f"task:{i}" in space for i in ids[:3])
    assert space["dead-archive"] == ids[1:3]
    assert space["stats"]["dead_evicted"] == "3" and space["stats"]["dead_archive_dropped"] == "1"
    archived = await queue.dead_archived()
    assert [a["task_id"] for _, a in archived] == [ids[2], ids[1]]  # newest first
    assert archived[1][1]["fields"]["last_error"] == f"boom {ids[1]}"
    assert archived[0][1]["fields"]["state"] == "dead" and archived[0][1]["evicted_at"] > 0
    snap = await queue.snapshot()
    assert (snap["dead_letter"], snap["dead_archived"], snap["dead_evicted"]) == (2, 2, 3)
    assert snap["dead_oldest_age_s"] >= 0


async def test_settle_from_a_reaped_worker_is_dropped(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.reap(W, lease_s=0)  # W taken for dead; a back in pending
    await queue.claim("w2", 1)  # and running on w2
    assert await queue.settle(W, [outcome(task, "error", "late")]) == (0, 1)
    assert (await queue.get(a))["state"] == "processing"


async def test_settle_counts_no_metrics_for_a_stale_task(queue: Queue, redis: Redis) -> None:
    [a, b] = await enqueue(queue, 2)
    tasks = await claim_all(queue)
    await redis.lrem(queue.keys.processing(W), 1, a)  # as if reaped: a is no longer W's
    assert await queue.settle(W, [outcome(t, "error", "x") for t in tasks]) == (1, 1)
    metrics = {k.decode(): int(v) for k, v in (await redis.hgetall(queue.keys.metrics)).items()}
    assert metrics["t|noop|error"] == 1 and metrics["rs|noop"] == 3
    assert sum(n for field, n in metrics.items() if field.startswith(("w|", "r|"))) == 2
    assert (await queue.get(b))["state"] == "retrying"


@pytest.mark.parametrize("settled", [3, 20])  # a few: one LREM each; most: one rewrite of the list
async def test_settle_takes_exactly_the_batch_out_of_the_workers_list_in_order(
    queue: Queue, redis: Redis, settled: int
) -> None:
    await enqueue(queue, 24)
    tasks = await claim_all(queue)
    mixed = tasks[1::2][: settled // 2] + tasks[::2][: settled - settled // 2]
    assert await queue.settle(W, [outcome(t) for t in mixed]) == (settled, 0)
    left = [t.id for t in reversed(tasks) if t not in mixed]  # the head holds the newest
    assert [i.decode() for i in await redis.lrange(queue.keys.processing(W), 0, -1)] == left
    assert await queue.settle(W, [outcome(t) for t in tasks]) == (len(left), settled)
    assert not await redis.exists(queue.keys.processing(W))


async def test_late_success_of_a_reaped_task_still_pending_counts_once(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    [task] = await claim_all(queue)
    await queue.reap(W, lease_s=0)
    assert await queue.settle(W, [outcome(task)]) == (1, 0)
    space = await keyspace(redis, queue.name)
    assert "pending" not in space and space[f"task:{a}"]["state"] == "succeeded"
    assert space["stats"]["succeeded"] == "1"


async def test_promote_moves_only_due_tasks(queue: Queue, redis: Redis) -> None:
    [due] = await enqueue(queue, delay=0.001)
    [later] = await enqueue(queue, delay=60)
    await asyncio.sleep(0.01)
    assert await queue.promote() == 1
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [due] and space["delayed"] == [later]
    assert space[f"task:{due}"]["state"] == "pending"


async def test_heartbeat_registers_worker_and_reports_when_it_was_reaped(queue: Queue, redis: Redis) -> None:
    _, known = await queue.heartbeat(W, {"pid": 1}, ttl_s=10)
    assert not known
    _, known = await queue.heartbeat(W, {"pid": 1}, ttl_s=10)
    assert known
    space = await keyspace(redis, queue.name)
    assert space["workers"] == [W] and space["worker:" + W] == {"pid": "1", "last_seen": "T"}
    await queue.reap(W, lease_s=0)
    _, known = await queue.heartbeat(W, {"pid": 1}, ttl_s=10)
    assert not known


async def test_a_released_worker_that_claims_again_is_registered_again(queue: Queue, redis: Redis) -> None:
    [a] = await enqueue(queue)
    await queue.heartbeat(W, {}, ttl_s=10)
    await queue.release(W)
    await claim_all(queue)  # a fetcher that outlived its shutdown
    assert (await keyspace(redis, queue.name))["workers"] == [W]
    assert await queue.reap(W, lease_s=0) == (1, 0, 0)
    assert (await queue.get(a))["state"] == "pending"


async def test_reap_leaves_a_live_worker_alone(queue: Queue, redis: Redis) -> None:
    await enqueue(queue)
    await queue.heartbeat(W, {}, ttl_s=10)
    await claim_all(queue)
    before = await keyspace(redis, queue.name)
    assert await queue.reap(W, lease_s=60) is None
    assert await keyspace(redis, queue.name) == before


async def test_reap_requeues_a_dead_workers_tasks_first_in_line(queue: Queue, redis: Redis) -> None:
    [a, b, c] = await enqueue(queue, 3)
    await queue.heartbeat(W, {}, ttl_s=10)
    await claim_all(queue, 2)
    assert await queue.reap(W, lease_s=0) == (2, 0, 0)
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [c, b, a]  # a, then b, run next; c waits
    assert space["stats"] == {"enqueued": "3", "recovered": "2"}
    crashed = run(1, "crashed", "pending", "its worker died while running it (crash 1)")
    # Queued again: its queued_at, which stood for enqueued_at, became it (_lib.lua: queue_again).
    assert space[f"task:{a}"] == record(enqueued_at="T", attempts=1, crashes=1, started_at="T", worker=W,
                                        runs=[crashed])
    assert "workers" not in space and "processing:" + W not in space


async def test_reap_quarantines_only_a_task_that_crashed_its_worker_alone(queue: Queue, redis: Redis) -> None:
    settings = queue.settings.replace(crash_limit=2)
    queue = Queue(redis, settings)
    [poison, innocent] = await enqueue(queue, 2)
    await claim_all(queue)  # both held: a crash blames neither for sure
    assert await queue.reap(W, 0) == (2, 0, 0)
    # Now both are suspects: each is handed out alone.
    tasks, blocked = await queue.claim(W, 10)
    assert [t.id for t in tasks] == [poison] and not blocked
    assert await queue.reap(W, 0) == (0, 1, 0)  # poison crashed alone, 2nd crash: quarantined
    tasks, _ = await queue.claim(W, 10)
    assert [t.id for t in tasks] == [innocent]
    await queue.settle(W, [outcome(tasks[0])])
    assert (await queue.get(poison))["reason"] == "crashed"
    assert (await queue.get(innocent))["state"] == "succeeded"


async def test_claim_blocks_on_a_suspect_while_the_worker_holds_other_tasks(queue: Queue, redis: Redis) -> None:
    await enqueue(queue)
    await claim_all(queue)
    [suspect] = await enqueue(queue)
    # As a reap leaves it: a crash follows a claim that counted an attempt, and the claim
    # reads crashes only of a task with attempts > 0 (formats.CLAIM_FIELDS).
    await redis.hset(queue.keys.task(suspect), mapping={"attempts": 1, "crashes": 1})
    tasks, blocked = await queue.claim(W, 10)
    assert tasks == [] and blocked
    # Moved in first (an older reliq's BLMOVE) too: the suspect goes back to the head of the queue.
    assert await move_in(queue, W) == suspect
    tasks, blocked = await queue.claim(W, 10, suspect)
    assert tasks == [] and blocked
    assert (await keyspace(redis, queue.name))["pending"] == [suspect]


async def test_release_hands_back_tasks_without_counting_the_attempt(queue: Queue, redis: Redis) -> None:
    [a, b] = await enqueue(queue, 2)
    await queue.heartbeat(W, {}, ttl_s=10)
    await claim_all(queue)
    assert await queue.release(W) == 2
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [b, a]
    # Its attempt given back (attempts 0, written as it changed), queued_at made its enqueued_at.
    assert space[f"task:{a}"] == record(enqueued_at="T", attempts=0, started_at="T", worker=W)
    assert "workers" not in space and "worker:" + W not in space


async def test_dead_requeue_and_purge(queue: Queue, redis: Redis) -> None:
    ids = await enqueue(queue, 3, max_retries=0)
    for task in await claim_all(queue):
        await queue.settle(W, [outcome(task, "error", "x")])
    assert await queue.dead_requeue([ids[0]]) == 1
    space = await keyspace(redis, queue.name)
    assert space["pending"] == [ids[0]] and space["dead"] == [ids[2], ids[1]]
    assert space[f"task:{ids[0]}"]["failures"] == "0" and space["stats"]["requeued"] == "1"
    assert await queue.dead_purge(oldest=10) == 2
    space = await keyspace(redis, queue.name)
    assert "dead" not in space and f"task:{ids[1]}" not in space


async def test_cancel_pending_and_scheduled_at_once_but_not_a_finished_task(queue: Queue, redis: Redis) -> None:
    from reliq.errors import CancelRefused

    [a] = await enqueue(queue)
    [b] = await enqueue(queue, delay=60)
    [c] = await enqueue(queue)
    assert await queue.cancel(a) == "pending"
    assert await queue.cancel(b) == "scheduled"
    [task] = await claim_all(queue)
    await queue.settle(W, [outcome(task)])
    with pytest.raises(CancelRefused):
        await queue.cancel(c)
    space = await keyspace(redis, queue.name)
    assert "pending" not in space and "delayed" not in space
    assert space[f"task:{a}"]["state"] == space[f"task:{b}"]["state"] == "cancelled"


async def test_snapshot_counts_every_state(queue: Queue, redis: Redis) -> None:
    await enqueue(queue, 3)
    await enqueue(queue, 1, delay=60)
    await queue.heartbeat(W, {}, ttl_s=10)
    await claim_all(queue, 1)
    snap = await queue.snapshot()
    assert (snap["pending"], snap["processing"], snap["delayed"], snap["workers"]) == (2, 1, 1, 1)
    assert snap["enqueued"] == 4 and snap["dead_letter"] == 0 and snap["lag_s"] >= 0
