"""Partitioned queues on a real Redis: routing, ids that say where a task lives, workers
serving every partition, crash recovery in each, one view of the whole, and changing N."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from reliq import limits, partitions
from reliq.client import AsyncClient, Client
from reliq.errors import ConfigError, InvalidTask
from reliq.formats import TaskState
from reliq.ids import new_id
from reliq.monitor import app as monitor
from reliq.monitor import browse, deadletter, dlq_io
from reliq.partitions import PartitionMap, index_of
from reliq.queue import Queue, make_spec
from reliq.schedules import make_schedule, read_one, trigger
from reliq.settings import Settings
from reliq.worker import Worker
from tests import procs
from tests.procs import ROOT
from tests.util import api_client, eventually


async def partitioned(queue: Queue, n: int = 3) -> PartitionMap:
    pmap = await partitions.resolve(queue, n)
    assert pmap.n == n
    return pmap


async def pending_by_partition(queue: Queue) -> list[int]:
    return [p["pending"] for p in (await queue.snapshot())["partitions"]]


async def states(queue: Queue, ids: list[str]) -> dict[str, str]:
    return dict(zip(ids, await queue.states(ids), strict=True))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reliq", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


async def test_one_partition_keeps_todays_keys_ids_and_writes_no_map(queue: Queue, redis: Redis) -> None:
    task_id = await queue.enqueue("noop")
    assert len(task_id) == 26 and partitions.SEP not in task_id
    assert await redis.exists(f"reliq:{{{queue.name}}}:task:{task_id}") == 1
    assert await redis.exists(f"reliq:{{{queue.name}}}:partitions") == 0
    assert (await partitions.resolve(queue, 1)).n == 1  # asked for 1: nothing to record
    assert await redis.exists(f"reliq:{{{queue.name}}}:partitions") == 0
    assert "partitions" not in await queue.snapshot()


async def test_three_partitions_round_robin_and_every_id_names_its_partition(
    queue: Queue, settings: Settings, redis: Redis
) -> None:
    pmap = await partitioned(queue)
    assert pmap.tags == (queue.name, f"{queue.name}:1", f"{queue.name}:2")
    async with AsyncClient(settings.redis_url, queue.name) as client:
        ids = [await client.enqueue("noop", i) for i in range(30)]
        assert await pending_by_partition(queue) == [10, 10, 10]
        for task_id in ids:
            index = index_of(task_id, 3)
            assert await redis.exists(f"reliq:{{{pmap.tags[index]}}}:task:{task_id}") == 1
            assert (await client.get(task_id))["state"] == "pending"
        assert sorted(ids) == ids  # the ULID first: ids still sort by creation time
    with Client(settings.redis_url, queue.name) as blocking:
        more = [blocking.enqueue("noop", i) for i in range(3)]
        assert sorted(index_of(i, 3) for i in more) == [0, 1, 2]
        assert {blocking.get(i)["state"] for i in more} == {"pending"}
        assert blocking.cancel(more[1]) == "pending"


async def test_a_key_a_unique_key_and_an_idempotency_key_each_keep_to_one_partition(
    queue: Queue, settings: Settings
) -> None:
    await partitioned(queue)
    async with AsyncClient(settings.redis_url, queue.name) as client:
        for key in ("alice", "bob", "carol", "dave"):
            keyed = await asyncio.gather(*(client.enqueue("noop", i, key=key) for i in range(6)))
            assert len({index_of(i, 3) for i in keyed}) == 1, keyed
        first = await client.enqueue("noop", 1, idempotency_key="order-7")
        assert [await client.enqueue("noop", 1, idempotency_key="order-7") for _ in range(5)] == [first] * 5
        unique = await client.enqueue("noop", 2, unique_key="report")
        assert [await client.enqueue("noop", 3, unique_key="report") for _ in range(5)] == [unique] * 5
        by_payload = await client.enqueue("noop", {"same": 1}, unique=True)
        assert [await client.enqueue("noop", {"same": 1}, unique=True) for _ in range(5)] == [by_payload] * 5
    snap = await queue.snapshot()
    assert snap["enqueued"] == 4 * 6 + 3 and snap["unique_hits"] == 10


async def test_a_batch_goes_whole_to_one_partition_and_one_of_mixed_keys_is_refused(
    queue: Queue, settings: Settings
) -> None:
    await partitioned(queue)
    async with api_client(queue, settings) as http:
        for _ in range(3):
            answer = await http.post("/tasks", json={"tasks": [{"type": "noop"}] * 10})
            assert answer.status == 202
            ids = (await answer.json())["task_ids"]
            assert len({index_of(i, 3) for i in ids}) == 1
        assert await pending_by_partition(queue) == [10, 10, 10]
        keys = [k for k in ("a", "b", "c", "d", "e") if partitions.hashed(f"knoop\0{k}", 3) == 2][:1]
        keys += [k for k in ("a", "b", "c", "d", "e") if partitions.hashed(f"knoop\0{k}", 3) != 2][:1]
        mixed = await http.post("/tasks", json={"tasks": [{"type": "noop", "key": k} for k in keys]})
        assert mixed.status == 400 and "separate batches" in (await mixed.json())["error"]
        one_key = await http.post("/tasks", json={"tasks": [{"type": "noop", "key": keys[0]}, {"type": "noop"}]})
        assert one_key.status == 202
        assert {index_of(i, 3) for i in (await one_key.json())["task_ids"]} == {2}
        single = await http.post("/task", json={"type": "noop"})
        task_id = (await single.json())["task_id"]
        got = await http.get(f"/task/{task_id}")
        assert got.status == 200 and (await got.json())["task_id"] == task_id
        assert (await http.post(f"/task/{task_id}/cancel")).status == 200
    assert sum(await pending_by_partition(queue)) == 32


async def test_a_batch_refused_writes_nothing(queue: Queue) -> None:
    await partitioned(queue)
    specs = [make_spec("noop", key=k) for k in ("a", "b", "c", "d", "e", "f")]
    with pytest.raises(InvalidTask, match="separate batches"):  # six keys over three partitions
        await queue.enqueue_specs(specs)
    assert (await queue.snapshot())["enqueued"] == 0


async def test_a_worker_without_the_flag_reads_the_map_and_drains_every_partition(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    await partitioned(queue)
    ids = [await queue.enqueue("noop", i) for i in range(60)]
    ids += [await queue.enqueue("noop", i, key=f"k{i % 4}") for i in range(20)]
    worker = procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--burst")
    assert worker.wait(60) == 0, (tmp_path / "w.log").read_text()
    assert set((await states(queue, ids)).values()) == {"succeeded"}
    snap = await queue.snapshot()
    assert [p["succeeded"] for p in snap["partitions"]] == [sum(1 for i in ids if index_of(i, 3) == n)
                                                            for n in range(3)]
    assert snap["succeeded"] == 80 and snap["pending"] == 0


async def test_a_sigkilled_worker_s_tasks_are_recovered_in_every_partition(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    await partitioned(queue)
    # durations that differ: runners free up one by one, and each claim then takes a task or two from a
    # partition chosen at random, so the worker soon holds tasks of every partition
    ids = [await queue.enqueue("sleep", 0.3 + (i % 7) * 0.15) for i in range(90)]
    worker = procs.worker(settings.redis_url, queue.name, tmp_path / "w1.log", "--concurrency", "12")
    held: list[list[str]] = []

    async def held_in_every_partition() -> bool:
        held[:] = [[i for ids_ in (await part.processing_lists()).values() for i in ids_]
                   for part in queue.parts_now()]
        return all(held)

    try:
        await eventually(held_in_every_partition, timeout=30, interval=0.005, what="tasks running in every partition")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        procs.stop(worker)
    assert await held_in_every_partition()  # as the kill left them: what must be recovered
    second = procs.worker(settings.redis_url, queue.name, tmp_path / "w2.log", "--concurrency", "30")
    try:
        await eventually(lambda: _all_succeeded(queue, ids), timeout=60, what="every task succeeded")
    finally:
        procs.stop(second)
    assert [i for i, s in (await states(queue, ids)).items() if s != "succeeded"] == []
    snap = await queue.snapshot()
    for n, part in enumerate(snap["partitions"]):
        assert (await queue.parts_now()[n].snapshot())["recovered"] >= len(held[n]) > 0, part
    for ids_ in held:
        assert {(await queue.get(i))["crashes"] for i in ids_} == {1}


async def _all_succeeded(queue: Queue, ids: list[str]) -> bool:
    return set((await states(queue, ids)).values()) == {"succeeded"}


async def test_a_role_started_with_another_count_than_recorded_exits_2(queue: Queue, settings: Settings) -> None:
    await partitioned(queue)
    for role in (["work", "--burst"], ["serve", "--port", "0"], ["monitor", "--port", "0"]):
        done = cli(*role, "--redis-url", settings.redis_url, "--queue", queue.name, "--partitions", "4")
        assert done.returncode == 2, done.stderr
        assert f"queue {queue.name!r} has 3 partition(s) recorded in Redis, not the 4" in done.stderr
        assert "Traceback" not in done.stderr
    with pytest.raises(ConfigError, match="--partitions 3"):
        await partitions.resolve(Queue(queue.redis, settings), 2)
    async with AsyncClient(settings.redis_url, queue.name, partitions=2) as client:
        with pytest.raises(ConfigError, match="not the 2"):  # at its first call
            await client.enqueue("noop")
    with pytest.raises(ConfigError, match="not the 2"):  # the blocking client: at once
        Client(settings.redis_url, queue.name, partitions=2)
    same = cli("work", "--burst", "--redis-url", settings.redis_url, "--queue", queue.name, "--partitions", "3")
    assert same.returncode == 0, same.stderr


async def test_partitions_grow_only_while_the_queue_is_quiet_and_old_ids_stay_found(
    queue: Queue, settings: Settings, redis: Redis
) -> None:
    old = await queue.enqueue("noop")  # one partition: a plain id, kept by partition 0 after
    done = cli("partitions", "set", queue.name, "3", "--redis-url", settings.redis_url)
    assert done.returncode == 2 and "1 pending" in done.stderr, done.stderr
    assert await redis.exists(f"reliq:{{{queue.name}}}:partitions") == 0  # refused: nothing written
    await queue.cancel(old)
    done = cli("partitions", "set", queue.name, "3", "--redis-url", settings.redis_url)
    assert done.returncode == 0, done.stderr
    assert (await queue.get(old))["state"] == "cancelled"
    queue.adopt(partitions.single(queue.name))  # a producer that read the map before the change...
    await asyncio.sleep(0)
    fresh = Queue(redis, settings)
    ids = [await fresh.enqueue("noop") for _ in range(3)]
    assert sorted(index_of(i, 3) for i in ids) == [0, 1, 2]
    assert cli("partitions", "set", queue.name, "2", "--redis-url", settings.redis_url).returncode == 2
    busy = cli("partitions", "set", queue.name, "5", "--redis-url", settings.redis_url)
    assert busy.returncode == 2 and "pending" in busy.stderr
    for task_id in ids:
        await fresh.cancel(task_id)
    grown = cli("partitions", "set", queue.name, "5", "--redis-url", settings.redis_url)
    assert grown.returncode == 0, grown.stderr
    pmap = await partitions.read(fresh)
    assert pmap.n == 5 and pmap.version == 2 and pmap.tags[:3] == (queue.name, f"{queue.name}:1", f"{queue.name}:2")
    for task_id in ids:
        assert (await fresh.get(task_id))["state"] == "cancelled"
    shown = cli("partitions", "show", queue.name, "--json", "--redis-url", settings.redis_url)
    assert shown.returncode == 0 and '"partitions": 5' in shown.stdout
    table = cli("stats", "--queue", queue.name, "--redis-url", settings.redis_url)
    assert table.returncode == 0 and "5 partitions" in table.stdout
    as_json = orjson.loads(cli("stats", "--json", "--queue", queue.name, "--redis-url", settings.redis_url).stdout)
    assert [p["tag"] for p in as_json["partitions"]] == list(pmap.tags)


async def test_a_live_worker_keeps_the_count_from_changing(queue: Queue, settings: Settings) -> None:
    await partitioned(queue)
    await queue.parts_now()[1].heartbeat("w1", {"pid": 1}, ttl_s=60)
    with pytest.raises(ConfigError, match="1 live worker"):
        await partitions.grow(Queue(queue.redis, settings), 4)


async def test_pause_and_resume_reach_every_partition(queue: Queue) -> None:
    await partitioned(queue)
    now, _ = await queue.pause(None, "test")
    assert now
    for part in queue.parts_now():
        assert (await part.snapshot())["paused"]["queue"] is not None
    assert (await queue.snapshot())["paused"]["queue"] is not None
    was, _ = await queue.resume(None)
    assert was
    for part in queue.parts_now():
        assert (await part.snapshot())["paused"]["queue"] is None


def test_routing_is_the_same_in_every_process_and_spreads_keys() -> None:
    counts = Counter(partitions.hashed(f"knoop\0customer-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 800
    assert partitions.hashed("knoop\0alice", 3) == partitions.hashed("knoop\0alice", 3)
    plain = new_id()
    assert index_of(plain, 3) == 0 and index_of(plain + ".2", 3) == 2 and index_of(plain + ".7", 3) == 0
    assert index_of(plain + ".01", 3) == 0 and partitions.with_partition(plain, 0) == plain


def test_tags_are_chosen_so_partitions_spread_over_primaries() -> None:
    primaries = ["a", "b", "c"]

    def node_of(tag: str) -> str:  # every plain tag on "a": the suffixes must find b and c
        return "a" if "." not in tag else primaries[int(tag.rpartition(".")[2]) % 3]

    tags = partitions.choose_tags("q", 3, ("q",), node_of, primaries)
    assert [node_of(t) for t in tags] == ["a", "b", "c"] and tags[0] == "q"
    assert sorted(Counter(node_of(t) for t in partitions.choose_tags("q", 6, ("q",), node_of, primaries))
                  .values()) == [2, 2, 2]


async def test_dead_letters_merge_over_partitions_and_go_back_each_to_its_own(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    await partitioned(queue)
    dead = [await queue.enqueue("fail", i, max_retries=1) for i in range(9)]  # one retry each, then dead
    assert {index_of(i, 3) for i in dead} == {0, 1, 2}
    worker = procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--retry-base", "0.05")
    try:
        await eventually(lambda: _all_in(queue, dead, "dead"), timeout=30, what="every task dead")
    finally:
        procs.stop(worker)
    assert sorted(await queue.dead_ids(0, 50)) == sorted(dead)
    assert {(r["attempts"], r["reason"]) for r in [await queue.get(i) for i in dead]} == {(2, "error")}
    assert (await queue.snapshot())["retried"] == 9
    assert len(await queue.dead_ids(2, 4)) == 4 and len(await queue.dead_ids(8, 4)) == 1
    listed = await deadletter.page(queue, limit=50)
    assert listed["total"] == 9 and sorted(row["task_id"] for row in listed["items"]) == sorted(dead)
    faceted = await deadletter.page(queue, deadletter.DeadFilter(type="fail"), limit=5)
    assert faceted["total"] == 9 and len(faceted["items"]) == 5 and faceted["types"] == {"fail": 9}
    exported = [line async for line in dlq_io.export(queue, archived=True)]
    assert sorted(line["task_id"] for line in exported) == sorted(dead)
    assert await queue.dead_requeue(ids=dead[:2]) == 2
    assert [(await queue.get(i))["state"] for i in dead[:2]] == ["pending", "pending"]
    assert sum(await pending_by_partition(queue)) == 2
    for i in dead[:2]:  # back in the partition the id names
        assert (await queue.parts_now()[index_of(i, 3)].snapshot())["pending"] >= 1
    assert await queue.dead_requeue(oldest=5) == 5
    assert await queue.dead_purge(oldest=10) == 2
    assert (await queue.snapshot())["dead_letter"] == 0


async def test_stats_and_metrics_show_the_queue_as_one_with_each_partition(queue: Queue, settings: Settings) -> None:
    await partitioned(queue)
    for i in range(6):
        await queue.enqueue("noop", i)
    async with TestClient(TestServer(monitor.create_app(queue, settings))) as http:
        stats = await (await http.get("/stats")).json()
        assert stats["pending"] == 6 and [p["pending"] for p in stats["partitions"]] == [2, 2, 2]
        assert [p["tag"] for p in stats["partitions"]] == [queue.name, f"{queue.name}:1", f"{queue.name}:2"]
        text = await (await http.get("/metrics")).text()
    for n in range(3):
        assert f'reliq_queue_depth{{partition="{n}",queue="{queue.name}",state="pending"}} 2.0' in text
    assert f'reliq_tasks_enqueued_total{{partition="1",queue="{queue.name}"}} 2.0' in text


async def test_a_schedule_of_a_partitioned_queue_lives_and_enqueues_in_partition_0(
    queue: Queue, settings: Settings
) -> None:
    await partitioned(queue)
    await queue.schedule_put(make_schedule("tick", type="noop", every=60), "api")
    task_id = await trigger(queue, "tick")
    assert task_id.startswith("tick:manual:") and index_of(task_id, 3) == 0
    assert (await queue.get(task_id))["state"] == "pending"
    assert (await read_one(queue, "tick"))["last_task_state"] == "pending"
    assert await pending_by_partition(queue) == [1, 0, 0]


async def test_the_task_listing_pages_through_every_partition(queue: Queue) -> None:
    await partitioned(queue)
    ids = {await queue.enqueue("noop", i) for i in range(23)}
    seen: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        got = await browse.page(queue, browse.TaskFilter(state=TaskState.PENDING), cursor, limit=5)
        assert got["total"] == 23
        seen += [row["task_id"] for row in got["items"]]
        cursor = got["next_cursor"]
    assert sorted(seen) == sorted(ids)
    assert {s["source"] for s in got["sources"]} >= {"pending", "pending@1", "pending@2"}


async def test_a_type_unique_by_default_routes_by_its_payload(queue: Queue, settings: Settings, redis: Redis) -> None:
    await partitioned(queue)
    for part in queue.parts_now():  # as a worker serving the type writes it to every partition it serves
        await part.set_type_defaults({"report": b'{"unique": true}'}, [])
    producer = Queue(redis, settings)
    first = await producer.enqueue("report", {"day": 1})
    assert [await producer.enqueue("report", {"day": 1}) for _ in range(5)] == [first] * 5
    with Client(settings.redis_url, queue.name) as blocking:
        assert blocking.enqueue("report", {"day": 1}) == first


async def test_one_partition_costs_redis_no_command_a_task(queue: Queue, settings: Settings, redis: Redis) -> None:
    """The plain path: one GET of the (absent) map a producer every REFRESH_S, nothing a task."""
    producer = Queue(redis, settings)
    await producer.enqueue("noop")  # the first call reads the map
    await redis.config_resetstat()
    for i in range(200):
        await producer.enqueue("noop", i)
    async with AsyncClient(settings.redis_url, queue.name) as client:
        for i in range(200):
            await client.enqueue("noop", i)
    stats = await redis.info("commandstats")
    assert stats.get("cmdstat_get", {}).get("calls", 0) <= 2, stats.get("cmdstat_get")  # the client's first read


async def test_waits_and_cancels_of_running_tasks_reach_every_partition(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    await partitioned(queue)
    async with AsyncClient(settings.redis_url, queue.name) as client:
        short = [await client.enqueue("sleep", 0.2) for _ in range(6)]
        long = [await client.enqueue("sleep", 60) for _ in range(3)]
        assert {index_of(i, 3) for i in short} == {index_of(i, 3) for i in long} == {0, 1, 2}
        worker = procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--concurrency", "10")
        try:
            done = await asyncio.gather(*(client.wait(i, timeout=30) for i in short))
            assert {d["state"] for d in done} == {"succeeded"}
            await eventually(lambda: _all_in(queue, long, "processing"), timeout=20, what="the long tasks running")
            assert {await client.cancel(i) for i in long} == {"processing"}  # their workers are asked to stop them
            ended = await asyncio.gather(*(client.wait(i, timeout=20) for i in long))
            assert {e["state"] for e in ended} == {"cancelled"}
        finally:
            procs.stop(worker)


async def _all_in(queue: Queue, ids: list[str], state: str) -> bool:
    return set((await states(queue, ids)).values()) == {state}


async def test_a_poison_pill_in_one_partition_is_quarantined_and_the_innocents_of_every_partition_succeed(
    queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    await partitioned(queue)
    innocent = [await queue.enqueue("sleep", 0.05) for _ in range(30)]
    poison = await queue.enqueue("poison")  # in whichever partition its turn gives it
    everything = [*innocent, poison]

    def start() -> subprocess.Popen[bytes]:
        return procs.worker(settings.redis_url, queue.name, tmp_path / "w.log", "--concurrency", "30",
                            "--app", "tests.apps.poison", "--crash-limit", "2")

    crashes, proc = 0, start()
    try:
        async def settled() -> bool:
            nonlocal crashes, proc
            if proc.poll() is not None:  # the poison took it down: start a replacement
                crashes += 1
                proc = start()
            return set((await states(queue, everything)).values()) <= {"succeeded", "dead"}

        await eventually(settled, timeout=60, interval=0.05, what="every task succeeded or dead")
    finally:
        procs.stop(proc)
    info = await queue.get(poison)
    assert (info["state"], info["reason"], info["crashes"]) == ("dead", "crashed", 2)
    assert set((await states(queue, innocent)).values()) == {"succeeded"}
    assert await queue.dead_ids() == [poison] and crashes == 2


async def test_a_rate_limit_is_shared_out_over_the_partitions_and_key_limits_kept_whole(
    queue: Queue, redis: Redis
) -> None:
    await partitioned(queue)
    view = await queue.set_limits("charge", limits.layer({"rate": "30/s", "key_concurrency": 2}))
    assert view["rate_per_s"] == 30 and view["key_concurrency"] == 2  # what was asked, as the queue's
    for part in queue.parts_now():  # each partition enforces a third of the rate: together, never more
        count, period_ms, _, key_concurrency, _ = (await redis.hget(part.keys.limits, "charge")).split(b"|")
        assert int(count) * 1000 / int(period_ms) == pytest.approx(10) and int(key_concurrency) == 2



async def test_a_worker_given_a_partitioned_queue_serves_and_listens_to_every_partition(
    queue: Queue, settings: Settings
) -> None:
    await partitioned(queue)
    worker = Worker(Queue(queue.redis, settings), settings, burst=True)
    await worker._serve_partitions()
    tags = list(queue.pmap.tags)
    assert list(worker.queues) == tags and [q.name for q in worker.fetcher.queues] == tags
    assert worker.fetcher.nudges is worker.nudges  # the wake-ups it waits for are the ones the worker runs
    assert sorted(worker.nudges.ready.values()) == sorted(tags)  # woken for a task in any partition
    assert worker.nudges.cancel_channels == {part.cancel_channel(worker.id) for part in queue.parts_now()}
