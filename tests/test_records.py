"""Record formats 1 and 2 (docs/architecture.md: "Record formats across an upgrade").

Every test reads the task hashes as Redis holds them, field by field: the formats are what
workers of two versions share, so a field too many or too few is the bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from reliq import partitions, records
from reliq.cli import main as cli
from reliq.errors import ConfigError
from reliq.formats import RecordFormat, RunOutcome, make_body, split_claimed
from reliq.monitor import dlq_io
from reliq.queue import Outcome, Queue
from reliq.registry import Context, Registry
from reliq.settings import Settings
from reliq.type_defaults import TypeDefaults
from reliq.worker import Worker
from tests.util import eventually

#: The fields a plain task of format 2 is enqueued with, and no other.
PLAIN_FIELDS = {"state", "queued_at", "type", "body"}
#: The fields the previous version's enqueue wrote (enqueue.lua: as_fields), format 1.
FORMAT_1_FIELDS = {"type", "payload", "opts", "max_retries", "attempts", "failures", "crashes", "enqueued_at",
                   "state", "queued_at"}
#: A format 1 success keeps these (settle.lua drops payload, opts, max_retries, worker, queued_at).
FORMAT_1_SUCCEEDED = {"type", "attempts", "failures", "crashes", "enqueued_at", "state", "started_at",
                      "finished_at", "result"}
#: A success whose record became a hash table (a value past 64 bytes): written anew (settle.lua).
REWRITTEN = {"state", "finished_at", "type", "attempts", "failures", "crashes", "enqueued_at", "started_at", "worker"}
#: A plain format 2 success: one HSET marks it succeeded and blanks its body.
FORMAT_2_SUCCEEDED = {"type", "body", "attempts", "queued_at", "state", "started_at", "worker", "finished_at"}


def body(settings: Settings, payload: Any, retries: int | None = None, timeout_ms: int | None = None,
         unique: str = "") -> str:
    """The body enqueue.lua writes for ``payload`` (opts: retries|timeout|trace|unique lock)."""
    r = settings.max_retries if retries is None else retries
    return make_body(f"{r}|{timeout_ms or ''}||{unique}", orjson.dumps(payload)).decode()


async def record(queue: Queue, task_id: str) -> dict[str, str]:
    [fields] = await queue.records([task_id])
    return fields


async def run_burst(queue: Queue, settings: Settings, registry: Registry) -> None:
    """Run everything pending and delayed with an in-process worker, then return."""
    assert await asyncio.wait_for(Worker(queue, settings, registry, burst=True).run(), 60)


def registry_of(**handlers: Callable[..., Any]) -> Registry:
    registry = Registry()
    for name, fn in handlers.items():
        registry.add(name, fn)
    return registry


def failing(seen: list[Any]) -> Callable[[Any], None]:
    """A handler that always raises, after noting the payload it got."""
    def handler(payload: Any) -> None:
        seen.append(payload)
        raise RuntimeError(f"no {payload!r}")
    return handler


def fails_once(payload: Any, ctx: Context) -> Any:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt")
    return {"ok": payload}


async def write_format_1(redis: Redis, queue: Queue, task_id: str, ttype: str, payload: Any,
                         max_retries: int, timeout_ms: int | None = None) -> dict[str, str]:
    """A pending record as the version before format 2 wrote it, pushed onto pending; its fields."""
    now = str(await _now_ms(redis))
    fields = {"type": ttype, "enqueued_at": now, "payload": orjson.dumps(payload).decode(),
              "opts": f"{max_retries}|{timeout_ms or ''}||", "max_retries": str(max_retries),
              "attempts": "0", "failures": "0", "crashes": "0", "state": "pending", "queued_at": now}
    assert set(fields) == FORMAT_1_FIELDS
    await redis.hset(queue.keys.task(task_id), items=[x for pair in fields.items() for x in pair])
    await redis.lpush(queue.keys.pending, task_id)
    return fields


def iso(ms: str) -> str:
    """A time of a record (ms) as GET /task shows it."""
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _now_ms(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


# -- 1. a new queue: format 2 -------------------------------------------------------------------


async def test_a_new_queue_writes_format_2_and_a_plain_task_has_four_fields(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    task_id = await queue.enqueue("noop", {"a": 1})
    assert await redis.get(queue.keys.format) == b"2"
    fields = await record(queue, task_id)
    assert set(fields) == PLAIN_FIELDS, fields
    assert fields["state"] == "pending" and fields["type"] == "noop"
    assert fields["body"] == body(settings, {"a": 1})
    info = await queue.get(task_id)
    assert (info["payload"], info["max_retries"], info["attempts"], info["failures"], info["crashes"]) == (
        {"a": 1}, settings.max_retries, 0, 0, 0)
    assert info["enqueued_at"] == iso(fields["queued_at"])  # its queued_at stands for it


async def test_a_task_that_sets_more_goes_the_general_path_with_its_extra_fields(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    delayed = await queue.enqueue("noop", 1, delay=60)
    idem = await queue.enqueue("noop", 2, idempotency_key="k-1")
    unique = await queue.enqueue("noop", 3, unique=True)
    keyed = await queue.enqueue("noop", 4, key="acct-9")
    urgent = await queue.enqueue("noop", 5, priority=8)
    retries = await queue.enqueue("noop", 6, max_retries=9, timeout=2.5)
    f = {i: await record(queue, i) for i in (delayed, idem, unique, keyed, urgent, retries)}
    for task_id, fields in f.items():
        assert "enqueued_at" in fields and "body" in fields, (task_id, fields)
        assert not {"payload", "opts", "max_retries", "attempts", "failures", "crashes"} & set(fields), fields

    assert set(f[delayed]) == {"state", "type", "enqueued_at", "body"} and f[delayed]["state"] == "scheduled"
    assert await redis.zscore(queue.keys.delayed, delayed) is not None
    assert f[delayed]["body"] == body(settings, 1)

    base = {"state", "queued_at", "type", "enqueued_at", "body"}
    assert set(f[idem]) == base | {"idem"} and f[idem]["idem"] == "k-1"
    assert f[idem]["queued_at"] == f[idem]["enqueued_at"]

    lock = f[unique]["unique"]
    assert set(f[unique]) == base | {"unique"}
    assert f[unique]["body"] == body(settings, 3, unique=lock)
    assert await redis.get(queue.keys.unique_prefix + lock) == unique.encode()

    assert set(f[keyed]) == base | {"key"} and f[keyed]["key"] == "acct-9"
    assert set(f[urgent]) == base | {"priority"} and f[urgent]["priority"] == "8"
    assert set(f[retries]) == base and f[retries]["body"] == body(settings, 6, retries=9, timeout_ms=2500)
    for task_id in (idem, unique, keyed, urgent, retries):
        assert f[task_id]["state"] == "pending"


async def test_a_types_default_retries_replace_the_queues_in_the_body_unless_the_task_gives_its_own(
        queue: Queue, settings: Settings) -> None:
    await queue.set_type_defaults({"typed": TypeDefaults(max_retries=7).entry()}, [])
    by_type = await queue.enqueue("typed", "x")
    own = await queue.enqueue("typed", "y", max_retries=2)
    other = await queue.enqueue("noop", "z")  # a typed queue has no plain path: every task has enqueued_at
    f = {i: await record(queue, i) for i in (by_type, own, other)}
    assert f[by_type]["body"] == body(settings, "x", retries=7)
    assert f[own]["body"] == body(settings, "y", retries=2)
    assert f[other]["body"] == body(settings, "z")
    for fields in f.values():
        assert set(fields) == PLAIN_FIELDS | {"enqueued_at"}, fields
    assert [(await queue.get(i))["max_retries"] for i in (by_type, own, other)] == [7, 2, settings.max_retries]


# -- 2. a queue in use: format 1 ----------------------------------------------------------------


async def test_a_queue_in_use_when_first_touched_stays_at_format_1_through_a_whole_life(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    await redis.hset(queue.keys.stats, "enqueued", 5)  # as a worker of the version before left it
    fine = await queue.enqueue("ok", {"n": 1})
    bad = await queue.enqueue("bad", {"n": 2}, max_retries=1)
    assert await redis.get(queue.keys.format) == b"1"
    for task_id, payload, retries in ((fine, {"n": 1}, settings.max_retries), (bad, {"n": 2}, 1)):
        fields = await record(queue, task_id)
        assert set(fields) == FORMAT_1_FIELDS, fields
        assert (fields["payload"], fields["opts"], fields["max_retries"]) == (
            orjson.dumps(payload).decode(), f"{retries}|||", str(retries))
        assert (fields["attempts"], fields["failures"], fields["crashes"]) == ("0", "0", "0")
        assert fields["state"] == "pending" and fields["enqueued_at"] == fields["queued_at"]

    seen: list[Any] = []
    await run_burst(queue, settings, registry_of(ok=lambda p: {"got": p}, bad=failing(seen)))
    done = await record(queue, fine)
    assert set(done) == FORMAT_1_SUCCEEDED, done
    assert (done["state"], done["result"], done["attempts"]) == ("succeeded", '{"got":{"n":1}}', "1")
    dead = await record(queue, bad)
    assert "body" not in dead and seen == [{"n": 2}, {"n": 2}]
    assert (dead["state"], dead["reason"], dead["attempts"], dead["failures"], dead["crashes"]) == (
        "dead", "error", "2", "2", "0")
    assert (dead["payload"], dead["opts"], dead["max_retries"]) == ('{"n":2}', "1|||", "1")

    assert await queue.dead_requeue([bad]) == 1
    again = await record(queue, bad)
    assert (again["state"], again["attempts"], again["failures"], again["crashes"]) == ("pending", "0", "0", "0")
    assert again["enqueued_at"] == dead["enqueued_at"] and "body" not in again
    await run_burst(queue, settings, registry_of(bad=lambda p: "fixed"))
    fixed = await record(queue, bad)
    assert (fixed["state"], fixed["result"], fixed["attempts"]) == ("succeeded", '"fixed"', "1")
    assert not {"payload", "opts", "max_retries", "body"} & set(fixed), fixed


# -- 3. format 1 records on a format 2 queue -----------------------------------------------------


async def test_format_1_records_on_a_format_2_queue_run_and_keep_their_format(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    assert await queue.decide_records() == RecordFormat.BODY
    await write_format_1(redis, queue, "old-ok", "ok", {"v": 1}, max_retries=3)
    await write_format_1(redis, queue, "old-bad", "bad", {"v": 2}, max_retries=1, timeout_ms=4000)
    new = await queue.enqueue("ok", {"v": 3})
    seen: list[Any] = []
    await run_burst(queue, settings, registry_of(ok=lambda p: p, bad=failing(seen)))

    done = await record(queue, "old-ok")
    assert set(done) == FORMAT_1_SUCCEEDED, done
    assert (done["state"], done["result"]) == ("succeeded", '{"v":1}')
    assert (await record(queue, new))["state"] == "succeeded"

    dead = await record(queue, "old-bad")
    assert seen == [{"v": 2}, {"v": 2}]
    assert "body" not in dead, dead
    assert (dead["state"], dead["attempts"], dead["failures"], dead["payload"], dead["opts"], dead["max_retries"]) == (
        "dead", "2", "2", '{"v":2}', "1|4000||", "1")
    assert set(dead) >= FORMAT_1_FIELDS


async def test_a_retrying_format_1_record_stays_format_1_between_attempts(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    await queue.decide_records()
    written = await write_format_1(redis, queue, "old-retry", "bad", [1, "a|b"], max_retries=2)
    [claimed], _ = await queue.claim("w-1", 1)
    assert (claimed.id, claimed.payload, claimed.max_retries, claimed.record_format) == (
        "old-retry", b'[1,"a|b"]', 2, RecordFormat.FIELDS)
    await queue.settle("w-1", [Outcome(claimed, RunOutcome.ERROR, "boom", 1)])
    fields = await record(queue, "old-retry")
    assert "body" not in fields and fields["state"] == "retrying" and fields["failures"] == "1"
    assert {k: fields[k] for k in ("payload", "opts", "max_retries", "enqueued_at")} == {
        k: written[k] for k in ("payload", "opts", "max_retries", "enqueued_at")}
    assert await queue.run_now("old-retry")
    [again], _ = await queue.claim("w-1", 1)
    assert (again.id, again.attempts, again.failures, again.payload) == ("old-retry", 2, 1, b'[1,"a|b"]')
    assert "body" not in await record(queue, "old-retry")


# -- 4. the upgrade ----------------------------------------------------------------------------


async def _older_worker(redis: Redis, queue: Queue, worker_id: str) -> None:
    """A registered worker of a version before format 2: its info hash has no ``records``."""
    await redis.zadd(queue.keys.workers, {worker_id: await _now_ms(redis)})
    await redis.hset(queue.keys.worker_info(worker_id), mapping={"host": "old-box", "pid": "1", "concurrency": "4"})


async def test_the_upgrade_refuses_while_an_older_worker_is_registered_then_turns_the_queue_to_2(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    await redis.hset(queue.keys.stats, "enqueued", 1)
    await _older_worker(redis, queue, "w-old")
    before = await queue.enqueue("noop", 1)
    assert set(await record(queue, before)) == FORMAT_1_FIELDS
    with pytest.raises(ConfigError, match="w-old"):
        await records.upgrade(queue)
    assert await redis.get(queue.keys.format) == b"1"
    assert [(p.partition, p.format, p.older) for p in await records.formats(queue)] == [
        (0, RecordFormat.FIELDS, ("w-old",))]

    await redis.delete(queue.keys.worker_info("w-old"))
    await redis.zrem(queue.keys.workers, "w-old")
    [p] = await records.upgrade(queue)
    assert (p.format, p.older) == (RecordFormat.FIELDS, ())  # the formats before
    assert await redis.get(queue.keys.format) == b"2"
    after = await queue.enqueue("noop", 2)
    assert set(await record(queue, after)) == PLAIN_FIELDS
    # Another producer reads the format with the partition map: a fresh one writes format 2 at once.
    fresh = await Queue(redis, settings).enqueue("noop", 3)
    assert set(await record(queue, fresh)) == PLAIN_FIELDS
    assert set(await record(queue, before)) == FORMAT_1_FIELDS  # written before: it keeps its format


def _reliq(*args: str) -> tuple[int, str]:
    """Exit code and output (its lines joined: rich wraps them at the terminal's width)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


def test_records_show_and_upgrade_on_the_command_line(settings: Settings) -> None:
    url, name = settings.redis_url, settings.queue

    async def setup(older: bool) -> None:
        redis = Redis.from_url(url)
        try:
            queue = Queue(redis, settings)
            if older:
                await redis.hset(queue.keys.stats, "enqueued", 1)
                await _older_worker(redis, queue, "w-old")
            else:
                await redis.delete(queue.keys.worker_info("w-old"))
                await redis.zrem(queue.keys.workers, "w-old")
        finally:
            await redis.aclose()

    asyncio.run(setup(older=True))
    code, shown = _reliq("records", "show", name, "--redis-url", url)
    assert code == 0 and "partition 0: record format 1; workers of a version before format 2: w-old" in shown, shown
    as_json = orjson.loads(_reliq("records", "show", name, "--redis-url", url, "--json")[1])
    assert as_json == {"queue": name, "partitions": [{"partition": 0, "format": 1, "older_workers": ["w-old"]}]}
    code, refused = _reliq("records", "upgrade", name, "--redis-url", url)
    assert code == 2 and "w-old" in refused, refused
    assert "record format 1" in _reliq("records", "show", name, "--redis-url", url)[1]

    asyncio.run(setup(older=False))
    code, done = _reliq("records", "upgrade", name, "--redis-url", url)
    assert code == 0 and "record format 2 from now on in partition(s) 0" in done, done
    code, shown = _reliq("records", "show", name, "--redis-url", url)
    assert code == 0 and "partition 0: record format 2" in shown and "before format 2" not in shown, shown
    assert _reliq("records", "upgrade", name, "--redis-url", url) == (0, f"queue {name!r}: record format 2 already")


async def test_a_worker_of_this_version_says_it_reads_format_2(queue: Queue, redis: Redis,
                                                                 settings: Settings) -> None:
    stop = asyncio.Event()
    worker = Worker(queue, settings, registry_of(ok=lambda p: p), worker_id="w-new")
    running = asyncio.create_task(worker.run(stop))
    try:
        async def registered() -> bool:
            return await redis.hget(queue.keys.worker_info("w-new"), records.SPEAKS) == b"2"
        await eventually(registered, what="the worker's info hash")
        [p] = await records.formats(queue)
        assert p.older == ()
        await records.upgrade(queue)  # not refused: the only worker reads format 2
    finally:
        stop.set()
        await running


# -- 5. enqueued_at through a retry and a reap ---------------------------------------------------


async def test_a_plain_task_retried_keeps_its_first_queued_time_as_enqueued_at(
        queue: Queue, settings: Settings) -> None:
    task_id = await queue.enqueue("flaky", "p")
    first = await record(queue, task_id)
    assert set(first) == PLAIN_FIELDS
    await run_burst(queue, settings, registry_of(flaky=fails_once))
    done = await record(queue, task_id)
    # Its run history made the record a hash table: the settle wrote it anew, compact.
    assert set(done) == REWRITTEN | {"result", "runs"}, done
    assert (done["state"], done["result"], done["attempts"], done["failures"]) == ("succeeded", '{"ok":"p"}', "2", "1")
    assert done["enqueued_at"] == first["queued_at"]
    assert int(done["started_at"]) > int(first["queued_at"])


async def test_a_retry_promoted_copies_the_first_queued_time_into_enqueued_at(queue: Queue) -> None:
    task_id = await queue.enqueue("flaky", "p")
    first = await record(queue, task_id)
    [claimed], _ = await queue.claim("w-1", 1)
    await queue.settle("w-1", [Outcome(claimed, RunOutcome.ERROR, "boom", 1)])
    assert "enqueued_at" not in await record(queue, task_id)
    await asyncio.sleep(0.01)  # so that the promotion's time is later than the enqueue's
    assert await queue.run_now(task_id)
    again = await record(queue, task_id)
    assert again["state"] == "pending" and again["enqueued_at"] == first["queued_at"]
    assert int(again["queued_at"]) > int(first["queued_at"])
    assert (await queue.get(task_id))["enqueued_at"] == iso(first["queued_at"])
    [claimed], _ = await queue.claim("w-1", 1)
    await queue.settle("w-1", [Outcome(claimed, RunOutcome.OK, "", 1)])
    assert (await record(queue, task_id))["enqueued_at"] == first["queued_at"]


async def test_a_plain_task_handed_back_by_the_reaper_keeps_its_first_queued_time(
        queue: Queue, redis: Redis) -> None:
    task_id = await queue.enqueue("noop", "p")
    first = await record(queue, task_id)
    await queue.heartbeat("w-dead", {"pid": 1}, ttl_s=60)
    [claimed], _ = await queue.claim("w-dead", 1)
    assert claimed.id == task_id
    await asyncio.sleep(0.01)  # so that the hand-back's time is later than the enqueue's
    await redis.zadd(queue.keys.workers, {"w-dead": 0})  # silent since 1970
    assert await queue.reap("w-dead", 1.0) == (1, 0, 0)
    back = await record(queue, task_id)
    assert back["state"] == "pending" and back["crashes"] == "1"
    assert back["enqueued_at"] == first["queued_at"]
    assert int(back["queued_at"]) > int(first["queued_at"])
    assert back["body"] == first["body"]


# -- 6. dead letters: edit, export, import ----------------------------------------------------


async def test_editing_a_dead_format_2_task_changes_the_payload_in_its_body_alone(
        queue: Queue, settings: Settings) -> None:
    task_id = await queue.enqueue("bad", {"v": 0}, max_retries=1, timeout=3)
    seen: list[Any] = []
    await run_burst(queue, settings, registry_of(bad=failing(seen)))
    dead = await record(queue, task_id)
    assert dead["state"] == "dead" and dead["body"] == body(settings, {"v": 0}, retries=1, timeout_ms=3000)
    assert await queue.dead_edit(task_id, {"v": "fixed"}, "ana")
    edited = await record(queue, task_id)
    assert edited["body"] == body(settings, {"v": "fixed"}, retries=1, timeout_ms=3000)
    assert "payload" not in edited
    [edit] = orjson.loads(edited["edits"])
    assert (edit["by"], edit["previous_payload"]) == ("ana", '{"v":0}')
    assert (await queue.get(task_id))["payload"] == {"v": "fixed"}

    assert await queue.dead_requeue([task_id]) == 1
    [claimed], _ = await queue.claim("w-1", 1)
    assert (claimed.id, claimed.payload, claimed.max_retries, claimed.timeout_ms) == (
        task_id, b'{"v":"fixed"}', 1, 3000)


async def test_export_spells_a_format_2_dead_record_as_format_1_and_import_round_trips(
        queue: Queue, redis: Redis, settings: Settings) -> None:
    task_id = await queue.enqueue("bad", {"v": [1, "x|y:z"]}, max_retries=1)
    seen: list[Any] = []
    await run_burst(queue, settings, registry_of(bad=failing(seen)))
    stored = await record(queue, task_id)
    [line] = [ln async for ln in dlq_io.export(queue)]
    assert line["task_id"] == task_id
    exported = line["record"]
    assert "body" not in exported
    assert (exported["payload"], exported["opts"], exported["max_retries"]) == ({"v": [1, "x|y:z"]}, "1|||", "1")
    assert {k: v for k, v in exported.items() if k not in ("payload", "opts", "max_retries")} == {
        k: v for k, v in stored.items() if k != "body"}

    assert await queue.dead_purge([task_id]) == 1
    [(name, tasks)] = dlq_io.parse([dlq_io.encode(line)], None).items()
    assert name == queue.name
    assert await dlq_io.import_tasks(queue, tasks) == [task_id]
    imported = await record(queue, task_id)
    assert imported["state"] == "dead" and "body" not in imported
    assert (imported["payload"], imported["opts"], imported["max_retries"]) == ('{"v":[1,"x|y:z"]}', "1|||", "1")
    assert await queue.dead_requeue([task_id]) == 1
    seen.clear()
    await run_burst(queue, settings, registry_of(bad=failing(seen)))
    assert seen == [{"v": [1, "x|y:z"]}] * 2  # max_retries 1: two attempts again
    again = await record(queue, task_id)
    assert (again["state"], again["failures"], again["attempts"]) == ("dead", "2", "2")


# -- 7. successes with and without a result ----------------------------------------------------


async def test_a_success_stores_a_result_only_when_there_is_one_and_blanks_the_body(
        queue: Queue, settings: Settings) -> None:
    with_result = await queue.enqueue("answer", 1)
    without = await queue.enqueue("quiet", 2)
    await run_burst(queue, settings, registry_of(answer=lambda p: {"n": p}, quiet=lambda p: None))
    done = await record(queue, with_result)
    assert set(done) == FORMAT_2_SUCCEEDED | {"result"}, done
    assert (done["state"], done["result"], done["body"], done["attempts"]) == ("succeeded", '{"n":1}', "", "1")
    quiet = await record(queue, without)
    assert set(quiet) == FORMAT_2_SUCCEEDED, quiet
    assert (quiet["state"], quiet["body"]) == ("succeeded", "")
    info = await queue.get(without)
    assert (info["result"], info["payload"], info["state"]) == (None, None, "succeeded")
    assert (await queue.get(with_result))["result"] == {"n": 1}


async def test_a_success_of_a_record_with_a_long_value_is_written_anew_compact(
        queue: Queue, settings: Settings) -> None:
    """A payload past hash-max-listpack-value makes the record a hash table: settle rewrites it."""
    task_id = await queue.enqueue("answer", "x" * 200)
    queued = (await record(queue, task_id))["queued_at"]
    await run_burst(queue, settings, registry_of(answer=lambda p: len(p)))
    done = await record(queue, task_id)
    assert set(done) == REWRITTEN | {"result"}, done
    assert (done["state"], done["result"], done["attempts"]) == ("succeeded", "200", "1")
    assert done["enqueued_at"] == queued  # the plain path's queued_at stood for it


# -- 8. the claim reply ------------------------------------------------------------------------


def test_split_claimed_takes_a_type_and_key_holding_the_separator() -> None:
    ttype, key, payload = "t|x:y", "k|1:2|", b'{"a":"b|c:d"}'
    opts = "3|1500|tp|5:t|x:y:k|"
    raw_body = make_body(opts, payload)
    raw = b"ID1|2|1700|1||1|" + f"{len(ttype)}|{ttype}{len(key)}|{key}".encode() + raw_body
    assert split_claimed(raw) == (b"ID1", b"2", b"1700", b"1", b"", b"1", ttype.encode(), key.encode(), raw_body)
    bare = b"ID2|1|1700||||4|noop0|" + make_body("3|||", b"null")
    assert split_claimed(bare) == (b"ID2", b"1", b"1700", b"", b"", b"", b"noop", b"", b"4:3|||null")
    empty_type = b"ID3|1|1|||" + b"|0|0|" + make_body("0|||", b"1")
    assert split_claimed(empty_type)[6:] == (b"", b"", b"4:0|||1")


async def test_a_keyed_task_whose_type_key_and_payload_hold_the_separator_runs(
        queue: Queue, settings: Settings) -> None:
    ttype, key, payload = "t|x:y", "k|1:2|", {"s": "b|c:d", "n": [1, 2]}
    got: list[tuple[Any, int]] = []

    def handler(p: Any, ctx: Context) -> Any:
        got.append((p, ctx.attempt))
        return p["s"]

    task_id = await queue.enqueue(ttype, payload, key=key, max_retries=4)
    fields = await record(queue, task_id)
    assert (fields["type"], fields["key"], fields["body"]) == (ttype, key, body(settings, payload, retries=4))
    [claimed], _ = await queue.claim("w-peek", 1)
    assert (claimed.id, claimed.type, claimed.key, claimed.payload, claimed.max_retries) == (
        task_id, ttype, key, orjson.dumps(payload), 4)
    await queue.release("w-peek")  # back to its key's list, to run in a worker
    await run_burst(queue, settings, registry_of(**{ttype: handler}))
    assert got == [(payload, 1)]  # the release gave the peek's attempt back
    done = await record(queue, task_id)
    assert (done["state"], done["result"], done["type"], done["body"]) == ("succeeded", '"b|c:d"', ttype, "")


async def test_a_keyed_format_2_success_keeps_its_key_and_worker_on_either_path(queue: Queue,
                                                                                settings: Settings) -> None:
    # Format 2's success is one HSET: the key and the worker stay (no HDEL), and the record
    # written anew (a value over 64 bytes) keeps them too, so both paths show the same.
    small = await queue.enqueue("answer", 1, key="k1")
    large = await queue.enqueue("answer", "x" * 100, key="k1")
    await run_burst(queue, settings, registry_of(answer=lambda p: 1))
    for task_id in (small, large):
        done = await record(queue, task_id)
        assert done["state"] == "succeeded" and done["key"] == "k1" and done["worker"], done
        info = await queue.get(task_id)
        assert info["key"] == "k1" and info["worker"] and info["payload"] is None


async def test_a_role_started_on_a_new_queue_decides_format_2_before_its_worker_registers(
        redis: Redis, settings: Settings) -> None:
    # partitions.resolve (every role's start) decides the format: a worker's first beat, which
    # creates the workers zset, must not make a new queue look in use.
    queue = Queue(redis, settings)
    await partitions.resolve(queue, 0)
    assert queue.record_format == RecordFormat.BODY and await redis.get(queue.keys.format) == b"2"
    await redis.zadd(queue.keys.workers, {"w1": 1})  # as the first beat does
    assert await Queue(redis, settings).decide_records() == RecordFormat.BODY  # decided once: it stays


async def test_partitions_grown_on_a_queue_of_format_1_take_format_1(redis: Redis, settings: Settings) -> None:
    queue = Queue(redis, settings)
    await redis.hset(queue.keys.stats, "enqueued", 1)  # in use before this version
    await partitions.resolve(queue, 0)
    assert queue.record_format == RecordFormat.FIELDS
    await partitions.grow(queue, 3)
    parts = await queue.parts()
    assert [p.record_format for p in parts] == [RecordFormat.FIELDS] * 3
    assert [await redis.get(p.keys.format) for p in parts] == [b"1"] * 3
    assert await records.upgrade(queue)  # and the upgrade turns them all
    assert [await redis.get(p.keys.format) for p in parts] == [b"2"] * 3


async def test_the_upgrade_script_itself_refuses_a_worker_that_registered_after_the_check(
        redis: Redis, settings: Settings) -> None:
    # records.upgrade checks every partition, then records.lua checks again as it writes: a
    # worker of an older version registering between the two is refused there, nothing written.
    queue = Queue(redis, settings)
    await redis.hset(queue.keys.stats, "enqueued", 1)  # in use before this version: format 1
    assert await queue.decide_records() == RecordFormat.FIELDS
    await redis.zadd(queue.keys.workers, {"w-late": 1})
    await redis.hset(queue.keys.worker_info("w-late"), mapping={"host": "h"})  # no 'records': older
    assert await queue.upgrade_records(RecordFormat.BODY) == ["w-late"]
    assert await redis.get(queue.keys.format) == b"1" and queue.record_format == RecordFormat.FIELDS
    await redis.hset(queue.keys.worker_info("w-late"), records.SPEAKS, 2)  # it reads format 2 after all
    assert await queue.upgrade_records(RecordFormat.BODY) == []
    assert await redis.get(queue.keys.format) == b"2" and queue.record_format == RecordFormat.BODY
