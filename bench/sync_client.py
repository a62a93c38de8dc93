"""reliq's blocking producer against Dramatiq's ``send()``: one thread, one enqueue after another.

    .venv/bin/python bench/sync_client.py [--calls 10000] [--runs 3] [--no-write]

What a web request handler does: enqueue one task and wait for Redis to have it. Each
library runs in its own process (Dramatiq from ``bench/.venv-peers/``, installed by
``bench/peers/run.py``'s installer on first use) against the same private redis-server,
the runs interleaved so that a busy moment of the machine hits every library alike.
Each call is timed apart, for p50/p99 of one call. Rows: ``reliq`` is ``Client.enqueue``,
``reliq-task`` the handler's own ``noop.enqueue()`` through the default client.
Writes the ``sync-client`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from peers.run import APPS, install, python_of
from report import calls_and_runs, machine, spread, write_section
from rich.console import Console

from reliq.redis_server import RedisServer

LIBS = ("reliq", "reliq-task", "dramatiq")


def one_run(lib: str, url: str, calls: int) -> dict[str, float]:
    """``calls`` timed enqueues of ``lib`` in a fresh process; its JSON report."""
    env = {"BENCH_REDIS_URL": url, "PYTHONPATH": str(APPS), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(python_of(lib.split("-")[0])), str(APPS / "sequential.py"), lib, str(calls)],
                         env=env, cwd=APPS, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{lib} failed: {out.stderr.strip()[-2000:]}")
    reply: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return reply


def redis_us_a_call(admin: redis.Redis, calls: int) -> float:
    """Microseconds redis-server spent a call running the scripts (INFO commandstats).

    Both libraries enqueue with one EVALSHA a call; the commands a script calls are
    counted inside its time (and apart as well, so only the script entries are summed).
    """
    stats = admin.info("commandstats")
    return float(sum(v["usec"] for k, v in stats.items() if k.startswith("cmdstat_eval"))) / calls


def main() -> None:
    args = calls_and_runs(__doc__, 10_000, 3)
    console = Console()
    install("dramatiq", console)
    data = Path(tempfile.mkdtemp(prefix="reliq-sync-bench-"))
    server = RedisServer(data, aof=False).start()
    results: dict[str, list[dict[str, float]]] = {lib: [] for lib in LIBS}
    try:
        for i in range(args.runs):
            for lib in LIBS:
                admin = redis.Redis.from_url(server.url)
                admin.flushall()
                admin.config_resetstat()
                r = one_run(lib, server.url, args.calls)
                r["redis_us"] = redis_us_a_call(admin, args.calls)
                results[lib].append(r)
                console.print(f"run {i + 1}/{args.runs} {lib}: {args.calls / r['seconds']:,.0f}/s, "
                              f"p50 {r['p50_us']:.0f} µs, p99 {r['p99_us']:.0f} µs, CPU {r['cpu_us']:.0f} µs")
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    md = table(results, args.calls)
    console.print(md)
    if not args.no_write:
        write_section("sync-client", _markdown(md, args))
        console.print("wrote bench/RESULTS.md")


def table(results: dict[str, list[dict[str, float]]], calls: int) -> str:
    """The markdown table: rate, p50, p99 and CPU of each library, and its rate over Dramatiq's.

    The ratio is taken run by run (each run's figure over Dramatiq's in the same round,
    seconds apart), then the median and range of those: a busy spell of the machine
    then moves both sides of a ratio alike.
    """
    rates = {lib: [calls / r["seconds"] for r in runs] for lib, runs in results.items()}
    lines = ["| producer | version | enqueue calls/s | p50 of one call, µs | p99 of one call, µs "
             "| producer CPU a call, µs | Redis a call, µs | calls/s ÷ Dramatiq's, run by run |",
             "|---|---|---|---|---|---|---|---|"]
    for lib, runs in results.items():
        ratios = [mine / theirs for mine, theirs in zip(rates[lib], rates["dramatiq"], strict=True)]
        lines.append(f"| {lib} | {runs[0]['version']} | {spread(rates[lib])} | "
                     f"{spread([r['p50_us'] for r in runs])} | {spread([r['p99_us'] for r in runs])} | "
                     f"{spread([r['cpu_us'] for r in runs])} | {spread([r['redis_us'] for r in runs])} | "
                     f"{spread(ratios, '{:.2f}x')} |")
    return "\n".join(lines)


def _markdown(md: str, args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""## Blocking producer, one thread, {args.calls:,} enqueues a run, {args.runs} runs, {when}

Machine: {machine()}

{md}

- One task a call, payload null, each call returning once Redis has the task; one
  process a library and run, the runs interleaved, one redis-server (AOF off), flushed
  before each run. The first call (connect, script load) is not counted.
- "Redis a call": redis-server's own time running the enqueue script (`INFO
  commandstats`), a call. reliq's script writes the task's whole record as hash fields (state, payload,
  retries, timestamps from the server's clock) and counts it; Dramatiq's stores the
  message as one string.
- `reliq`: `Client("redis://…", "bench").enqueue("bench-noop")`; `reliq-task`: the
  `@reliq.task` handler's own `noop.enqueue(None)`; `dramatiq`: `noop.send()` on its
  RedisBroker, hiredis installed for both.
- Rerun: `chrt -f 10 .venv/bin/python bench/sync_client.py --calls {args.calls} --runs {args.runs}`
  (as root: real-time FIFO scheduling for the producers and their redis-server, so that
  a shared machine's other processes do not cut into a round trip; every library gets
  the same). Without it, on a machine loaded by others, the wall-clock figures swing by
  2x between runs and p99 reaches milliseconds; the CPU a call moves far less.
"""


if __name__ == "__main__":
    main()
