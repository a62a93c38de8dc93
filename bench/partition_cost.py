"""What routing costs a producer: the Python side of an enqueue with 1 and with 3 partitions.

    .venv/bin/python bench/partition_cost.py [--calls 200000] [--runs 5] [--no-write]

Redis pays nothing a task for partitions (tests/test_partitions.py counts its commands:
a queue of one partition reads its absent map once every 5 s a producer). What is left
is the producer's own work: ``Queue.place`` (the map's freshness checked, a partition
chosen, the ids of partitions past 0 given their suffix), timed here in CPU time, the
map already read, on a private redis-server that only answers that read. Rows: one
partition, three round-robin (no key), three by key (a flow key hashed). Writes the
``partition-cost`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from report import calls_and_runs, machine, write_section
from rich.console import Console

from reliq import partitions
from reliq.connection import connect
from reliq.queue import Queue, make_spec
from reliq.redis_server import RedisServer
from reliq.settings import Settings

CASES = (("1 partition", 1, False), ("3 partitions, round-robin", 3, False), ("3 partitions, by key", 3, True))


async def one_run(url: str, calls: int) -> dict[str, float]:
    """CPU microseconds a ``place`` call, for each case."""
    redis = connect(url)
    out: dict[str, float] = {}
    try:
        for label, n, keyed in CASES:
            queue = Queue(redis, Settings(redis_url=url, queue=f"cost-{n}-{int(keyed)}-{time.time_ns()}"))
            await partitions.resolve(queue, n)
            specs = [[make_spec("noop", i, key=f"k{i % 100}" if keyed else None)] for i in range(1000)]
            await queue.place(specs[0])
            began = time.process_time()
            for i in range(calls):
                await queue.place(specs[i % 1000])
            out[label] = (time.process_time() - began) / calls * 1e6
    finally:
        await redis.aclose()
    return out


def main() -> None:
    args = calls_and_runs(__doc__, 200_000, 5)
    console = Console()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, aof=False).start()
        try:
            for _ in range(args.runs):
                runs.append(asyncio.run(one_run(server.url, args.calls)))
        finally:
            server.stop()
    rows = ["| producer's routing | CPU µs a call (median of runs) | runs |", "|---|---|---|"]
    for label, _, _ in CASES:
        each = [r[label] for r in runs]
        rows.append(f"| {label} | {statistics.median(each):.2f} | {', '.join(f'{v:.2f}' for v in each)} |")
    body = "\n".join([
        f"## Partitions: what routing costs a producer, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "", machine(), "", *rows, "",
        f"`Queue.place` for one enqueue of one task, {args.calls:,} calls a run, the map already read (CPU time of "
        "this process). Redis pays no command a task for partitions (tests/test_partitions.py counts them); an "
        "enqueue itself costs the producer tens of µs (bench/RESULTS.md, the blocking producer), so one partition "
        "adds about nothing and routing over three a few µs, the id's suffix included.",
        "", f"- Rerun: `.venv/bin/python bench/partition_cost.py --calls {args.calls} --runs {args.runs}`",
    ])
    console.print(body, markup=False)
    if not args.no_write:
        write_section("partition-cost", body)


if __name__ == "__main__":
    main()
