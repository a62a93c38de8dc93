"""What a task costs: Redis commands and CPU on the processing side, CPU to enqueue, bytes.

    .venv/bin/python bench/costs.py [--tasks 20000] [--runs 3]

One private redis-server (AOF off). Each run: enqueue the no-op tasks in batches of 100,
note memory, reset INFO commandstats, run one burst worker in this process (uvloop)
until the queue is empty, then read:

- commands a task, client-issued: what the worker's redis-py client sent (EVALSHA,
  BLMOVE, ...), counted by wrapping its ``execute_command`` and pipelines;
- commands a task, all: every call in INFO commandstats, the commands that run inside
  the Lua scripts included;
- bytes a pending task and a finished (succeeded, kept for the result TTL) task: the
  change of INFO used_memory over the tasks, and MEMORY USAGE of one task hash;
- CPU a task (this process's process_time, redis-server's INFO cpu), to enqueue and to
  process: far less noisy than rates on a shared machine, so optimisations are judged by
  it. Run with ``PYTHONPATH=<an older tree>`` to measure an older reliq the same way.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import machine, spread, write_section  # noqa: E402

import reliq.builtins  # noqa: E402, F401  (registers noop)
from reliq.connection import connect  # noqa: E402
from reliq.queue import Queue, make_spec  # noqa: E402
from reliq.redis_server import RedisServer  # noqa: E402
from reliq.registry import REGISTRY  # noqa: E402
from reliq.settings import Settings  # noqa: E402
from reliq.worker import Worker  # noqa: E402


class Counting:
    """Counts the commands a redis-py client sends (pipelined ones one by one)."""

    def __init__(self, redis: Redis) -> None:
        self.sent = 0
        original = redis.execute_command

        async def execute_command(*args: Any, **options: Any) -> Any:
            self.sent += 1
            return await original(*args, **options)

        redis.execute_command = execute_command  # type: ignore[method-assign]
        make_pipeline = redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Pipeline:
            pipe = make_pipeline(*args, **kwargs)
            run = pipe.execute

            async def execute(*a: Any, **k: Any) -> Any:
                self.sent += len(pipe.command_stack)
                return await run(*a, **k)

            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        redis.pipeline = pipeline  # type: ignore[method-assign]


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def cpu_seconds(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_run(url: str, tasks: int) -> dict[str, float]:
    settings = Settings(redis_url=url, queue="costs")
    admin = connect(url)
    await admin.flushall()
    queue = Queue(admin, settings)
    base = await used_memory(admin)
    ids: list[str] = []
    enqueue_redis_cpu = await cpu_seconds(admin)
    enqueue_cpu = time.process_time()
    for i in range(0, tasks, 100):
        done = await queue.enqueue_specs([make_spec("noop", None) for _ in range(min(100, tasks - i))])
        ids += [task_id for task_id, _ in done]
    enqueue_cpu = time.process_time() - enqueue_cpu
    enqueue_redis_cpu = await cpu_seconds(admin) - enqueue_redis_cpu
    pending = await used_memory(admin)
    pending_hash = await admin.memory_usage(queue.keys.task(ids[len(ids) // 2]), samples=0)
    await admin.config_resetstat()
    redis = connect(url, max_connections=8)
    counter = Counting(redis)
    redis_cpu = await cpu_seconds(admin)
    started, cpu = time.perf_counter(), time.process_time()
    await Worker(Queue(redis, settings), settings, REGISTRY, burst=True).run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    redis_cpu = await cpu_seconds(admin) - redis_cpu
    stats = await admin.info("commandstats")
    everything = sum(v["calls"] for k, v in stats.items() if "resetstat" not in k)
    # What a client can send and a script cannot: the worker's round trips, read from the server's side.
    sent = sum(v["calls"] for k, v in stats.items() if k.split("_", 1)[1] in ("evalsha", "eval", "blmove"))
    print("commands a task:", ", ".join(f"{k.split('_', 1)[1]} {v['calls'] / tasks:.3f}" for k, v in
                                        sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
                                        if v["calls"] / tasks >= 0.001))
    finished = await used_memory(admin)
    finished_hash = await admin.memory_usage(queue.keys.task(ids[len(ids) // 2]), samples=0)
    await redis.aclose()
    await admin.aclose()
    return {
        "rate": tasks / seconds,
        "enqueue_us": enqueue_cpu / tasks * 1e6,
        "enqueue_redis_us": enqueue_redis_cpu / tasks * 1e6,
        "worker_us": cpu / tasks * 1e6,
        "redis_us": redis_cpu / tasks * 1e6,
        "client": counter.sent / tasks,
        "scripts": sent / tasks,
        "all": everything / tasks,
        "pending_bytes": (pending - base) / tasks,
        "finished_bytes": (finished - base) / tasks,
        "pending_hash": float(pending_hash or 0),
        "finished_hash": float(finished_hash or 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="reliq-costs-redis-"))
    server = RedisServer(data, aof=False).start()
    runs: list[dict[str, float]] = []
    try:
        for i in range(args.runs):
            runs.append(uvloop.run(one_run(server.url, args.tasks)))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:,.2f}" for k, v in runs[-1].items()))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)

    def col(key: str, fmt: str = "{:,.0f}") -> str:
        return spread([r[key] for r in runs], fmt)

    lines = [
        "| measure | value |", "|---|---|",
        f"| Redis commands a task, processing side, client-issued | {col('client', '{:.3f}')} |",
        f"| ... the same read from INFO commandstats (EVALSHA + BLMOVE calls) | {col('scripts', '{:.3f}')} |",
        f"| Redis commands a task, processing side, all (inside scripts too) | {col('all', '{:.2f}')} |",
        f"| bytes a pending task (used_memory / tasks) | {col('pending_bytes')} |",
        f"| bytes a finished task, kept for the result TTL (used_memory / tasks) | {col('finished_bytes')} |",
        f"| MEMORY USAGE of a task hash, pending / succeeded | {col('pending_hash')} / {col('finished_hash')} |",
        f"| CPU a task: worker process / redis-server, microseconds | {col('worker_us', '{:.1f}')} / "
        f"{col('redis_us', '{:.1f}')} |",
        f"| (burst worker, no-op tasks/s during the count) | {col('rate')} |",
        f"| CPU a task to enqueue in batches of 100 (make_spec + enqueue_specs): client / redis-server, "
        f"microseconds | {col('enqueue_us', '{:.1f}')} / {col('enqueue_redis_us', '{:.1f}')} |",
    ]
    print("\n".join(lines))
    print(f"median commands: client {statistics.median(r['client'] for r in runs):.3f}")
    if not args.no_write:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_section("costs", f"""## What a task costs Redis, {when}

Machine: {machine()}

{chr(10).join(lines)}

- {args.tasks:,} no-op tasks enqueued in batches of 100 (payload null), then run by one burst
  worker (concurrency 64, uvloop); {args.runs} runs.
- Rerun: `.venv/bin/python bench/costs.py --tasks {args.tasks} --runs {args.runs}`
""")


if __name__ == "__main__":
    main()
