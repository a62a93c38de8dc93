"""The dashboard's task listing at a million pending tasks: page latency and Redis time a page.

    .venv/bin/python bench/browse_million.py [--pending 1000000] [--delayed 100000] [--runs 30] [--no-write]

Enqueues ``--pending`` tasks through ``Queue.enqueue_specs`` (full records, 1,000 a call:
every 100th of type ``mid``, every 100,000th ``rare``, the rest ``common``) and
``--delayed`` scheduled ones (every 100th then made ``retrying``), claims 64 as a worker
would, then asks the monitor's ``GET /tasks`` for each kind of page ``--runs`` times over
HTTP (an in-process aiohttp server on a private redis-server) and reports the latency
percentiles, the ids each page read, and the time Redis spent on it (from ``SLOWLOG``
with a threshold of 0: a script's entry covers the commands it ran).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import aiohttp  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402
from report import machine, write_section  # noqa: E402

from reliq.connection import connect  # noqa: E402
from reliq.monitor import app as monitor  # noqa: E402
from reliq.queue import Outcome, Queue, make_spec  # noqa: E402
from reliq.redis_server import RedisServer  # noqa: E402
from reliq.settings import Settings  # noqa: E402


def kind(i: int) -> str:
    return "rare" if i % 100_000 == 99_990 else "mid" if i % 100 == 7 else "common"


async def fill(queue: Queue, pending: int, delayed: int) -> float:
    """Enqueue the tasks; seconds it took."""
    began = time.perf_counter()
    # Scheduled ones first; every 100th made retrying (run now, claimed, failed: due again in an hour).
    retry_ids = []
    for first in range(0, delayed, 1000):
        specs = [make_spec("later", {"n": i}, delay=3600 + i / 1000) for i in range(first, min(delayed, first + 1000))]
        ids = await queue.enqueue_specs(specs)
        retry_ids += [task_id for j, (task_id, _) in enumerate(ids) if (first + j) % 100 == 0]
    for task_id in retry_ids:
        await queue.run_now(task_id)
    while claimed := (await queue.claim("bench:retry", 100))[0]:
        await queue.settle("bench:retry", [Outcome(t, "error", "boom", 1, 3_600_000) for t in claimed])
    for first in range(0, pending, 1000):
        await queue.enqueue_specs([make_spec(kind(i), {"n": i}) for i in range(first, min(pending, first + 1000))])
    return time.perf_counter() - began


async def redis_us(redis: Any) -> int:
    """Microseconds Redis spent on the commands logged since the last reset (the SLOWLOG calls left out)."""
    entries = await redis.slowlog_get(1000)
    return sum(int(e["duration"]) for e in entries if not bytes(e["command"]).upper().startswith(b"SLOWLOG"))


async def commands(redis: Any) -> int:
    """Every command Redis ran so far, those run inside scripts included (``INFO commandstats``)."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def measure(args: argparse.Namespace) -> tuple[list[str], float]:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="reliq-browse-")), aof=False).start()
    redis = connect(server.url)
    try:
        queue = Queue(redis, Settings(redis_url=server.url, queue="browse"))
        loaded = await fill(queue, args.pending, args.delayed)
        await queue.claim("bench:worker", 64)
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 1000)
        app = monitor.create_app(queue, queue.settings)
        app.cleanup_ctx.clear()  # no sampler: its reading a second would count in a page's commands and time
        web = TestServer(app, host="127.0.0.1")
        await web.start_server()
        n = (await queue.backlog())[0]
        pages = [
            ("pending, first page", {"state": "pending"}),
            ("pending, at 500,000", {"state": "pending", "cursor": "pending:500000:"}),
            ("pending, last page", {"state": "pending", "cursor": f"pending:{n - 50}:"}),
            ("pending, type mid (1 %)", {"state": "pending", "type": "mid"}),
            ("pending, type rare (10 in all)", {"state": "pending", "type": "rare"}),
            ("scheduled, first page", {"state": "scheduled"}),
            ("retrying (1 % of delayed)", {"state": "retrying"}),
            ("running (64 claimed)", {"state": "running"}),
        ]
        rows = []
        async with aiohttp.ClientSession() as http:
            for name, params in pages:
                took, busy, cost, read, shown = [], [], [], 0, 0
                for _ in range(args.runs):
                    await redis.slowlog_reset()
                    before = await commands(redis)
                    began = time.perf_counter()
                    async with http.get(web.make_url("/tasks"), params={"limit": "50", **params}) as resp:
                        body = await resp.json()
                        assert resp.status == 200, body
                    took.append((time.perf_counter() - began) * 1000)
                    # less the INFO of `before` and the SLOWLOG RESET before it
                    cost.append(await commands(redis) - before - 1)
                    busy.append(await redis_us(redis) / 1000)
                    read, shown = body["scanned"], len(body["items"])
                took.sort()
                rows.append(f"| {name} | {shown} | {read:,} | {statistics.median(took):.1f} ms |"
                            f" {took[int(len(took) * 0.95) - 1]:.1f} ms | {statistics.median(busy):.2f} ms |"
                            f" {max(cost):,} |")
                print(rows[-1], flush=True)
        await web.close()
        return rows, loaded
    finally:
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--delayed", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows, loaded = asyncio.run(measure(args))
    print(f"(enqueued in {loaded:.0f} s)")
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_section("browse-million", f"""## The dashboard's task listing at {args.pending:,} pending tasks, {when}

Machine: {machine()}

`GET /tasks?limit=50` over HTTP (in-process monitor, private redis-server), {args.runs} runs each;
{args.delayed:,} scheduled tasks beside, 1 % of them retrying. "Redis time" is what Redis spent
on the page (SLOWLOG at threshold 0: a script's entry includes the commands it ran), i.e. how
long the page held Redis from everybody else; "commands" the most Redis commands a page ran
over the runs (`INFO commandstats` before and after, those a script ran included; the
monitor's sampler is off, so nothing else runs on that Redis).

| page | rows | ids read | p50 | p95 | Redis time (p50) | commands (max) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- Rerun: `.venv/bin/python bench/browse_million.py --pending {args.pending} --delayed {args.delayed} --runs {args.runs}`
""")


if __name__ == "__main__":
    main()
