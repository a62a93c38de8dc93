"""Wake-up latency of an idle worker serving many queues, and the connections it holds.

    .venv/bin/python bench/wakeups.py [--samples 1000] [--runs 3] [--queues 50] [--before TREE] [--no-write]

One private redis-server (AOF off) and one ``reliq work`` process serving ``--queues``
queues (the first of weight 10, the others of weight 1). Each sample enqueues one task
into one of the low-weight queues (in turn) while the worker is idle, and measures from
just before the enqueue call to the moment the handler starts (``bench/wakeup_app.py``
sends the time as a datagram: one machine, one clock); then waits 20-40 ms, so the next
task finds the worker idle again. The worker's connections are counted with CLIENT LIST
(every client but the benchmark's own), idle before the samples and at the end.

``--before TREE`` measures a second worker the same way with the reliq of ``TREE`` (e.g.
``git archive <commit> reliq | tar -x -C /tmp/before``), alternating with this tree's
run by run, since the machine is shared. Figures: median [min-max] over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from redis.asyncio import Redis  # noqa: E402
from report import machine, spread_table, write_section  # noqa: E402

from reliq.connection import connect  # noqa: E402
from reliq.queue import Queue  # noqa: E402
from reliq.redis_server import RedisServer  # noqa: E402
from reliq.settings import Settings  # noqa: E402


async def connections(redis: Redis) -> int:
    """The clients of the private Redis but the benchmark's own connection (its pool holds one): the worker's."""
    mine = await redis.client_id()
    return sum(1 for c in await redis.client_list() if int(c["id"]) != mine)


def one_run(url: str, tree: str | None, n_queues: int, samples: int, work_dir: Path) -> dict[str, float]:
    """Start a worker (of ``tree``'s reliq, or this one), measure ``samples`` wake-ups, stop it."""
    names = [f"wake-{i}" for i in range(n_queues)]
    stamps = work_dir / "stamps.sock"
    stamps.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stamps))
    sock.setblocking(False)
    env = {**os.environ, "RELIQ_BENCH_STAMPS": str(stamps),
           "PYTHONPATH": os.pathsep.join([tree or str(ROOT), str(HERE)])}
    args = [sys.executable, "-m", "reliq", "work", "--redis-url", url, "--app", "wakeup_app", "--concurrency", "4",
            *(a for i, n in enumerate(names) for a in ("--queue", f"{n}={10 if i == 0 else 1}"))]
    with (work_dir / "worker.log").open("ab") as log, sock:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir)
        try:
            return asyncio.run(measure(url, names, proc, sock, samples, work_dir))
        finally:
            proc.terminate()
            proc.wait(30)


async def measure(url: str, names: list[str], proc: subprocess.Popen[bytes], sock: socket.socket, samples: int,
                  work_dir: Path) -> dict[str, float]:
    redis = connect(url, max_connections=1)
    settings = Settings(redis_url=url)
    queues = [Queue(redis, settings, n) for n in names]
    loop = asyncio.get_running_loop()
    try:
        deadline = time.monotonic() + 60
        while not await queues[0].worker_ids():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start: see {work_dir / 'worker.log'}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # every loop of every queue has run once
        idle = await connections(redis)
        waits = []
        for n in range(samples):
            queue = queues[1 + n % (len(names) - 1)]
            start = time.time()
            await queue.enqueue("stamp", {"n": n})
            while True:
                got, started = (await asyncio.wait_for(loop.sock_recv(sock, 100), 30)).decode().split()
                if int(got) == n:
                    break
            waits.append((float(started) - start) * 1000)
            await asyncio.sleep(random.uniform(0.02, 0.04))
        end = await connections(redis)
    finally:
        await redis.aclose()
    waits.sort()
    return {"p50": statistics.median(waits), "p99": waits[int(len(waits) * 0.99) - 1], "max": waits[-1],
            "idle": idle, "end": end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--before", help="a tree whose reliq is measured the same way, alternating")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    variants = {"after": None, **({"before": args.before} if args.before else {})}
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    work_dir = Path(tempfile.mkdtemp(prefix="reliq-wakeups-"))
    server = RedisServer(work_dir / "redis", aof=False).start()
    try:
        for run in range(args.runs):
            order = list(variants) if run % 2 == 0 else list(variants)[::-1]
            for variant in order:
                server_flush(server.url)
                r = one_run(server.url, variants[variant], args.queues, args.samples, work_dir)
                results[variant].append(r)
                print(f"run {run + 1} {variant}: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms; "
                      f"connections {r['idle']:.0f} idle, {r['end']:.0f} after the samples", flush=True)
    finally:
        server.stop()
    table = spread_table(results, [("p50", "{:.2f}"), ("p99", "{:.2f}"), ("max", "{:.2f}"),
                                   ("idle", "{:,.0f}"), ("end", "{:,.0f}")])
    print(table)
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    before = f" --before {args.before}" if args.before else ""
    write_section("wakeups", f"""## Waking an idle worker of {args.queues} queues, and its connections, {when}

Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} (a shared machine)

| worker | wake-up p50 ms | p99 ms | max ms | connections, idle | connections, after the samples |
|---|---|---|---|---|---|
{table}

- One `reliq work` process serving {args.queues} queues (one of weight 10, the others 1),
  concurrency 4; {args.samples:,} samples a run, each one task into the next low-weight
  queue while the worker is idle, from just before the enqueue call to the handler's
  start; {args.runs} runs, the workers in turn. `after`: this tree (one pub/sub connection
  for every queue's wake-ups, docs/architecture.md "Waking idle workers"); `before`: the
  reliq of `{args.before or '-'}` (one BLMOVE a queue).
- Rerun: `.venv/bin/python bench/wakeups.py --samples {args.samples} --runs {args.runs} --queues {args.queues}{before}`
""")


def server_flush(url: str) -> None:
    """Start each run on an empty Redis (the other worker's registration, records and lists gone)."""
    subprocess.run(["redis-cli", "-u", url, "FLUSHALL"], check=True, capture_output=True)


if __name__ == "__main__":
    main()
