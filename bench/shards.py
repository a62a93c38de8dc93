"""What a task costs each shard of a Redis Cluster with 1, 2 and 3 partitions, and the throughput.

    .venv/bin/python bench/shards.py [--tasks 6000] [--batch 64] [--throughput-tasks 20000] [--workers 2]
                                     [--no-callgrind] [--no-throughput] [--no-write]

**Instructions a shard.** A private three-primary cluster (reliq/redis_cluster.py) runs
each primary under ``valgrind --tool=callgrind`` (AOF off, as in bench/instructions.py).
For N = 1, 2, 3, ``--tasks`` no-op tasks go through N partitions, a batch of 100 to one
partition, round-robin; then each partition is claimed ``--batch`` at a time (each
batch by its own worker id) and settled as succeeded: the same life as in
bench/instructions.py. Each primary's counters are dumped after each N (bench/callgrind.py),
so each figure is that shard's instructions for that N divided by the tasks. What a
node runs on its own (serverCron, the cluster bus) is measured first, idle, for
``IDLE_S`` seconds, and that rate times each phase's length is subtracted.

**Throughput** (no valgrind): the same cluster shape, ``--workers`` ``reliq work``
processes serving every partition (concurrency 64), and one producer in this process
enqueuing ``--throughput-tasks`` no-op tasks 100 a call (4 calls in flight); tasks/s
from the first enqueue to the last success. On a 2-core machine that is shared by
everything — three Redis nodes, the workers and the producer — so it shows how far
Python is from the shards' ceiling, not the ceiling.

The queue is one queue of N partitions (reliq/partitions.py): its map places them on N
different primaries, the producer's router sends each call to the next partition, and
the workers serve every partition.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from report import machine, write_section  # noqa: E402

from reliq import partitions  # noqa: E402
from reliq.client import AsyncClient  # noqa: E402
from reliq.connection import connect  # noqa: E402
from reliq.queue import Outcome, Queue, make_spec  # noqa: E402
from reliq.redis_cluster import LocalCluster  # noqa: E402
from reliq.settings import Settings  # noqa: E402

#: Seconds the idle nodes are measured for, to subtract what they run on their own.
IDLE_S = 5.0
PARTITIONS = (1, 2, 3)


async def partitioned(redis: Redis, url: str, n: int) -> Queue:
    """A fresh queue of ``n`` partitions (its map written: one partition a primary)."""
    queue = Queue(redis, Settings(redis_url=url, queue="s-" + uuid.uuid4().hex[:10]))
    await partitions.resolve(queue, n)
    return queue


async def life(queue: Queue, tasks: int, batch: int, per_call: int = 100) -> None:
    """Enqueue ``tasks`` no-ops ``per_call`` a call (the producer's router sends each call to the next
    partition), then claim and settle every partition's, ``batch`` at a time."""
    for start in range(0, tasks, per_call):
        await queue.enqueue_specs([make_spec("noop", None) for _ in range(min(per_call, tasks - start))])
    for n, part in enumerate(queue.parts_now()):
        while claimed := (await part.claim(f"w{n}", batch))[0]:
            applied, _ = await part.settle(f"w{n}", [Outcome(t, "ok", "", 0) for t in claimed])
            assert applied == len(claimed)


async def measured_life(url: str, n: int, tasks: int, batch: int, dump: Callable[[str], float]) -> float:
    """One task through each partition first (connections made, scripts loaded on every shard that
    will run them), the counters dumped, then :func:`life` alone, dumped again; its length in seconds."""
    redis = connect(url, max_connections=16)
    try:
        queue = await partitioned(redis, url, n)
        await life(queue, n, batch, per_call=1)
        started = await asyncio.to_thread(dump, "warm-up")
        await life(queue, tasks, batch)
        return await asyncio.to_thread(dump, f"partitions-{n}") - started
    finally:
        await redis.aclose()


@dataclass
class ShardCounts:
    """Instructions a task on each primary (by port), for each number of partitions."""

    ports: list[int]
    per_task: dict[int, list[float]]  # partitions -> per primary, in ``ports`` order
    idle_rate: list[float]  # instructions a second each primary runs on its own


def count_shards(tasks: int, batch: int, work: Path) -> ShardCounts:
    """Run the lives under callgrind; the instructions a task each primary ran for each N."""
    outs = [work / f"callgrind.{i}.out" for i in range(3)]
    cluster = LocalCluster(work / "cluster", node_timeout_ms=15_000, wrap=lambda i: callgrind.command(outs[i]))
    cluster.start(timeout=120, node_timeout=60)
    try:
        pids = [n.proc.pid for n in cluster.nodes if n.proc]
        dumps = 0

        def dump_all(label: str) -> float:
            nonlocal dumps
            for pid in pids:
                callgrind.dump(pid, label)
            dumps += 1
            return time.monotonic()

        mark = dump_all("start")
        time.sleep(IDLE_S)
        idle_s = dump_all("idle") - mark
        idle = [callgrind.instructions(out, dumps) / idle_s for out in outs]
        per_task = {}
        for n in PARTITIONS:
            length = asyncio.run(measured_life(cluster.url, n, tasks, batch, dump_all))
            per_task[n] = [(callgrind.instructions(out, dumps) - idle[i] * length) / tasks
                           for i, out in enumerate(outs)]
        return ShardCounts([node.port for node in cluster.nodes], per_task, idle)
    finally:
        cluster.stop()


async def _new_queue(url: str, n: int) -> str:
    redis = connect(url)
    try:
        return (await partitioned(redis, url, n)).name
    finally:
        await redis.aclose()


async def _produce(url: str, name: str, tasks: int, in_flight: int = 4) -> None:
    async with AsyncClient(url, name, Settings(redis_url=url, queue=name)) as client:
        calls = iter(range(0, tasks, 100))

        async def producer() -> None:
            for start in calls:
                await client.enqueue_many([("noop", None)] * min(100, tasks - start))

        await asyncio.gather(*(producer() for _ in range(in_flight)))


async def _succeeded(url: str, name: str) -> int:
    redis = connect(url)
    try:
        return (await Queue(redis, Settings(redis_url=url, queue=name)).snapshot())["succeeded"]
    finally:
        await redis.aclose()


def throughput(tasks: int, workers: int, work: Path) -> dict[int, tuple[float, float]]:
    """For each N: (enqueue tasks/s, end-to-end tasks/s) on a cluster without valgrind."""
    cluster = LocalCluster(work / "plain").start()
    out = {}
    try:
        for n in PARTITIONS:
            name = asyncio.run(_new_queue(cluster.url, n))
            procs = [subprocess.Popen([sys.executable, "-m", "reliq", "work", "--redis-url", cluster.url,
                                       "--queue", name, "--partitions", str(n), "--concurrency", "64",
                                       "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
                     for _ in range(workers)]
            try:
                time.sleep(3.0)  # imported and blocked in their fetch
                started = time.monotonic()
                asyncio.run(_produce(cluster.url, name, tasks))
                enqueued = time.monotonic()
                while asyncio.run(_succeeded(cluster.url, name)) < tasks:
                    if time.monotonic() - started > 300:
                        raise RuntimeError("the workers did not finish within 300 s")
                    time.sleep(0.05)
                done = time.monotonic()
                out[n] = (tasks / (enqueued - started), tasks / (done - started))
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait(30)
    finally:
        cluster.stop()
    return out


def _rows(counts: ShardCounts) -> list[str]:
    rows = []
    for n, measured in counts.per_task.items():
        per = [max(v, 0.0) for v in measured]  # a shard no task touched: idle subtracted, +-1,000 of noise
        hottest = max(per)
        rows.append(f"| {n} | " + " | ".join(f"{v:,.0f}" for v in per) + f" | {sum(per):,.0f} | {hottest:,.0f} "
                    f"| {max(counts.per_task[1]) / hottest:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--throughput-tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reliq-shards-"))
    sections = []
    if not args.no_callgrind:
        callgrind.require()
        counts = count_shards(args.tasks, args.batch, work)
        rows = _rows(counts)
        print("\n".join(rows))
        ports = " | ".join(f"primary {i + 1}" for i in range(len(counts.ports)))
        sections.append(f"""| partitions | {ports} | all shards | hottest shard | hottest vs 1 partition |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Instructions a no-op task's whole life (enqueue, claim, settle as success) costs each
primary, callgrind on all three; {args.tasks:,} tasks, enqueued 100 a call (a batch to
one partition, round-robin), claimed and settled {args.batch} a call. Each node's own
background work (cron, cluster bus: {", ".join(f"{r / 1e6:.1f}M" for r in counts.idle_rate)}
instructions/s idle) is subtracted.""")
    if not args.no_throughput:
        load = os.getloadavg()[0]
        rates = throughput(args.throughput_tasks, args.workers, work)
        rows = [f"| {n} | {enq:,.0f} | {e2e:,.0f} |" for n, (enq, e2e) in rates.items()]
        print("\n".join(rows))
        sections.append(f"""| partitions | enqueued/s | end to end tasks/s |
|---|---|---|
{chr(10).join(rows)}

Throughput without valgrind: {args.throughput_tasks:,} no-op tasks, one producer (this
process, 100 a call, 4 calls in flight), {args.workers} `reliq work` processes of
concurrency 64 serving every partition, three Redis primaries; all on this 2-core
machine, so Python (producer and workers), not Redis, sets this figure. Load average
when it began: {load:.1f} (the machine's other work shares the same cores).""")
    if args.no_write or not sections:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = "\n\n".join(sections)
    write_section("shards", f"""## Issue 17 §4: a task's cost on each shard with 1, 2 and 3 partitions, {when}

Machine: {machine()}

One queue of N partitions (`partitions.resolve`: one partition a primary).

{body}

- Rerun: `.venv/bin/python bench/shards.py --tasks {args.tasks} --throughput-tasks {args.throughput_tasks}`
""")


if __name__ == "__main__":
    main()
