"""A million pending tasks: the dashboard's load and the task listing's pages cost Redis a bounded amount of work.

Counted as Redis commands (``INFO commandstats`` before and after each request, on a
private redis-server nobody else uses), not timed: a page without a filter runs a few
commands and one HMGET a row wherever its cursor is; a type filter reads at most
``SCAN_BUDGET`` records a page and its cursor goes on from there. The latency of these
pages at a million is measured by bench/browse_million.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from reliq.connection import connect
from reliq.monitor import app as monitor
from reliq.monitor import browse
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings

N = 1_000_000
#: Tasks loaded per script call (without records, each holds the private Redis ~0.2 s).
CHUNK = 200_000
#: Every RARE_EVERY-th task is of the rare type: ten among the million, at positions 9,
#: 100,009, 200,009, ... (0 = the newest).
RARE_EVERY = 100_000
RARE_AT = RARE_EVERY - 10
#: Positions whose tasks get a record: every window the test reads (a record costs ~10 us
#: to write in a script on a loaded machine, so a million of them would be 10 s of set-up;
#: an id without a record costs the listing the same HMGET).
READ_WINDOWS = [(0, 3 * browse.SCAN_BUDGET), (100_000, 100_000 + browse.SCAN_BUDGET), (500_000, 500_050), (N - 50, N)]

#: Pushes tasks number ARGV[1] .. ARGV[2] onto the pending list (newest at the left, as
#: enqueue.lua leaves them), each with a minimal record when ARGV[3] is 1. Every
#: ARGV[4]-th (from ARGV[5]) is of the rare type. With ARGV[7] 'delayed' the ids go into
#: the delayed set instead (due in the future, in the same order: position = n - 1 - i)
#: as scheduled tasks, and the rare ones are retrying.
LOAD = """
local pending, delayed, prefix = KEYS[1], KEYS[2], KEYS[3]
local first, last, records = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local every, at, now, where = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local letter = where == 'delayed' and 'D' or 'T'
local ids = {}
local function flush()
  if #ids == 0 then return end
  if where == 'delayed' then redis.call('ZADD', delayed, unpack(ids)) else redis.call('LPUSH', pending, unpack(ids)) end
  ids = {}
end
for i = first, last do
  local id = string.format('%s%025d', letter, i)
  local rare = i % every == at
  if records then
    local state = where == 'delayed' and (rare and 'retrying' or 'scheduled') or 'pending'
    redis.call('HSET', prefix .. id, 'type', rare and 'rare' or 'common', 'state', state,
               'attempts', '0', 'enqueued_at', now, 'queued_at', now)
  end
  if where == 'delayed' then ids[#ids + 1] = tostring(3600000000000 - i) end
  ids[#ids + 1] = id
  if #ids >= 5000 then flush() end
end
flush()
return last - first + 1
"""


#: The delayed set is smaller: a ZADD costs a script ~14 us here, and a page of it is a
#: ZRANGE by rank (O(log n) to its start), so its size matters less than the pending list's.
DELAYED_N = 100_000
DELAYED_RARE_EVERY = 10_000


def task_id(i: int, letter: str = "T") -> str:
    """The id of task number ``i`` (pushed i-th: at position n - 1 - i); D for the delayed ones."""
    return f"{letter}{i:025d}"


async def load(client: Redis, queue: Queue, where: str, n: int, every: int) -> None:
    """Push ``n`` ids into ``where`` (pending or delayed), those of READ_WINDOWS with their records."""
    now = str(int(time.time() * 1000))
    recorded = [(max(0, n - stop), max(0, n - start)) for start, stop in READ_WINDOWS]  # as task numbers
    cuts = sorted({0, n, *(i for r in recorded for i in r if i <= n)})
    for low, high in itertools.pairwise(cuts):
        with_records = any(a <= low < b for a, b in recorded)
        for first in range(low, high, CHUNK):
            await client.eval(LOAD, 3, queue.keys.pending, queue.keys.delayed, queue.keys.task_prefix,
                              first, min(high, first + CHUNK) - 1, int(with_records), every, every - 10, now,
                              where)


@pytest.fixture
async def million(tmp_path: Path, queue_name: str) -> AsyncIterator[tuple[Queue, Redis]]:
    """A private redis-server holding a queue of a million pending tasks (and 100,000 scheduled ones)."""
    server = RedisServer(tmp_path / "redis", aof=False).start()
    client = connect(server.url)
    queue = Queue(client, Settings(redis_url=server.url, queue=queue_name))
    began = time.perf_counter()
    await load(client, queue, "pending", N, RARE_EVERY)
    await load(client, queue, "delayed", DELAYED_N, DELAYED_RARE_EVERY)
    print(f"loaded {N:,} pending and {DELAYED_N:,} scheduled tasks in {time.perf_counter() - began:.1f} s")
    try:
        yield queue, client
    finally:
        await client.aclose()
        server.stop()


#: Scripts' entries: their time includes the commands they ran, counted on their own too.
SCRIPT_CALLS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_fcall")


async def commands(client: Redis) -> tuple[int, int]:
    """Every command Redis ran so far (those run inside scripts included), and their time (us)."""
    stats = {k: v for k, v in (await client.info("commandstats")).items() if k.startswith("cmdstat_")}
    return (sum(int(v["calls"]) for v in stats.values()),
            sum(int(v["usec"]) for k, v in stats.items() if k not in SCRIPT_CALLS))


#: A bound on the time Redis spends in the commands of a page that must not depend on the
#: number of tasks: not a speed measure (bench/browse_million.py is), a guard against one
#: command that reads the whole list, which a count of commands cannot see: an LPOS
#: through the million ids takes ~40 ms here, their LRANGE ~200 ms; a page, ~0.7 ms.
FULL_READ_US = 25_000
#: Redis's own clock (commandstats usec) runs slow on a loaded machine: run alone, after the parallel part of
#: `make test`.
pytestmark = pytest.mark.serial


async def counted(http: TestClient, client: Redis, params: dict[str, str], path: str = "/tasks",
                  ) -> tuple[dict[str, Any], int]:
    """GET ``path`` with ``params``: its answer and how many Redis commands it cost (printed: pytest -s)."""
    before, before_us = await commands(client)
    resp = await http.get(path, params=params)
    assert resp.status == 200, await resp.text()
    page = await resp.json()
    after, after_us = await commands(client)
    cost = after - before - 1  # the INFO of `before` counts itself
    if path == "/tasks":
        print(f"GET /tasks {params}: {cost} Redis commands in {after_us - before_us} us, {page['scanned']} ids "
              f"read, {len(page['items'])} rows")
    else:
        print(f"GET {path}: {cost} Redis commands in {after_us - before_us} us")
    if not {"type", "key"} & set(params) and params.get("state") != "retrying":  # not a (bounded) scan
        assert after_us - before_us < FULL_READ_US, (path, params, after_us - before_us)  # no full read
    return page, cost


#: What the dashboard reads as it loads (app.js, tasks.js), beside its first page of tasks.
PAGE_LOAD = ("/stats", "/workers", "/queues", "/history", "/dead", "/schedules", "/limits")


#: What a filtered page may cost: an HMGET an id read, an LRANGE a slice, a few more.
SCAN_COST = browse.SCAN_BUDGET * 1.02 + 20


async def test_pages_of_a_million_pending_tasks_cost_redis_a_bounded_number_of_commands(
    million: tuple[Queue, Redis],
) -> None:
    queue, client = million
    assert await client.llen(queue.keys.pending) == N
    app = monitor.create_app(queue, queue.settings)
    app.cleanup_ctx.clear()  # no sampler: its reading a second would count among a page's commands
    http = TestClient(TestServer(app))
    await http.start_server()
    try:
        # The page's load: none of its reads depends on how many tasks wait.
        for path in PAGE_LOAD:
            _, cost = await counted(http, client, {}, path)
            assert cost <= 40, (path, cost)
        # Unfiltered: the first page, one in the middle, the last: the same few commands.
        for cursor, first in (("", N - 1), ("pending:500000:", N - 1 - 500_000), (f"pending:{N - 50}:", 49)):
            page, cost = await counted(http, client, {"state": "pending", "limit": "50", "cursor": cursor})
            assert [r["task_id"] for r in page["items"]] == [task_id(first - j) for j in range(50)]
            assert page["total"] == N and page["scanned"] == 50
            # One HMGET a row, an LRANGE or two, the lengths of the lists (ten priorities), the wake mark.
            assert cost <= 50 + 20, (cursor, cost)
        assert page["next_cursor"] is None  # the last page says so
        # A type filter: at most SCAN_BUDGET records read, and the cursor goes on from there.
        page, cost = await counted(http, client, {"state": "pending", "type": "rare", "limit": "50"})
        assert page["scanned"] == browse.SCAN_BUDGET and page["next_cursor"] == f"pending:{browse.SCAN_BUDGET}:"
        assert [(r["task_id"], r["position"]) for r in page["items"]] == [(task_id(9 * RARE_EVERY + RARE_AT), 9)]
        assert cost <= SCAN_COST, cost
        page, cost = await counted(http, client, {"state": "pending", "type": "rare", "cursor": page["next_cursor"]})
        assert page["items"] == [] and page["next_cursor"] == f"pending:{2 * browse.SCAN_BUDGET}:"
        assert cost <= SCAN_COST, cost
        # From deep in the list, as bounded: it finds the rare task at position 100,009.
        page, cost = await counted(http, client, {"state": "pending", "type": "rare", "cursor": "pending:100000:"})
        assert [(r["task_id"], r["position"]) for r in page["items"]] == [
            (task_id(8 * RARE_EVERY + RARE_AT), 100_009)]
        assert cost <= SCAN_COST, cost
        # Scheduled and retrying tasks share the delayed set: a page reads its records, as bounded.
        # (the first page skips the one retrying task at position 9).
        page, cost = await counted(http, client, {"state": "scheduled", "limit": "50"})
        soonest = [task_id(DELAYED_N - 1 - j, "D") for j in range(51) if j != 9]
        assert [r["task_id"] for r in page["items"]] == soonest
        # The state is a filter here: an HMGET of it an id read, and one of the row a match.
        assert page["total"] == DELAYED_N and not page["total_exact"] and cost <= 2 * 51 + 10, cost
        page, cost = await counted(http, client, {"state": "retrying", "cursor": "delayed:10:"})
        assert [(r["task_id"], r["position"]) for r in page["items"]] == [
            (task_id(DELAYED_N - 1 - DELAYED_RARE_EVERY - 9, "D"), DELAYED_RARE_EVERY + 9)]
        assert page["items"][0]["due_at"] and page["scanned"] == browse.SCAN_BUDGET and cost <= SCAN_COST, cost
    finally:
        await http.close()
