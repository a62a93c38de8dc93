"""What flow control costs (issue 14 §5): one worker's no-op throughput with keys, with a rate limit, and without.

    .venv/bin/python bench/flow.py [--tasks 20000] [--runs 3] [--before OLD_TREE] [--no-write]

One private redis-server (AOF off). Each run of a scenario is a process of its own: it
empties Redis, enqueues ``--tasks`` no-op tasks (not timed), then runs one burst worker
(in that process, uvloop, concurrency 64) until the queue is empty, and reports tasks/s,
redis-server CPU a task and Redis commands a task (INFO commandstats, those inside the
scripts included). The scenarios take turns, run after run, so a busy neighbour slows all
alike:

- ``plain``: no key, no limit: the path every queue without flow control takes;
- ``plain-before`` (with ``--before``): the same, with the reliq of another tree (e.g.
  ``git archive <commit> reliq | tar -x -C /tmp/old``), for the before/after of a change;
- ``rated``: the type limited to 10,000,000/s, far above what a worker can run: the
  limit should cost about nothing;
- ``keys``: the tasks spread over 1,000 keys at ``key_concurrency=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import machine, spread_table, write_section  # noqa: E402

SCENARIOS = ("plain-before", "plain", "rated", "keys")
KEYS = 1000


async def one(url: str, scenario: str, tasks: int) -> dict[str, float]:
    """One run of ``scenario`` against an emptied Redis."""
    import reliq.builtins  # noqa: F401  (registers noop)
    from reliq.connection import connect
    from reliq.ids import new_id
    from reliq.queue import Queue, make_spec
    from reliq.registry import REGISTRY
    from reliq.settings import Settings
    from reliq.worker import Worker

    settings = Settings(redis_url=url, queue="flow")
    admin = connect(url)
    await admin.flushall()
    queue = Queue(admin, settings)
    if scenario == "rated":
        await queue.write_limits("set", {"noop": {"rate": [10_000_000, 1000, 0]}})
    elif scenario == "keys":
        await queue.write_limits("set", {"noop": {"key_concurrency": 1}})
    base = make_spec("noop", None)
    for i in range(0, tasks, 1000):
        if scenario == "keys":
            specs = [dataclasses.replace(base, id=new_id(), key=f"k{j % KEYS}") for j in range(i, i + 1000)]
        else:
            specs = [dataclasses.replace(base, id=new_id()) for _ in range(1000)]
        await queue.enqueue_specs(specs)
    await admin.config_resetstat()
    cpu = await _cpu(admin)
    redis = connect(url, max_connections=8)
    started = time.perf_counter()  # (the worker declares noop's limits, none: the set layer stays)
    await Worker(Queue(redis, settings), settings, REGISTRY, burst=True).run()
    seconds = time.perf_counter() - started
    cpu = await _cpu(admin) - cpu
    stats = await admin.info("commandstats")
    commands = sum(v["calls"] for k, v in stats.items() if "resetstat" not in k and "info" not in k)
    done = (await queue.snapshot())["succeeded"]
    await redis.aclose()
    await admin.aclose()
    assert done == tasks, (scenario, done)
    return {"rate": tasks / seconds, "redis_us": cpu / tasks * 1e6, "commands": commands / tasks}


async def _cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_one(url: str, scenario: str, tasks: int, before: str | None) -> dict[str, float]:
    """A run in a process of its own (with the old tree on PYTHONPATH for plain-before)."""
    env = dict(os.environ)
    if scenario == "plain-before":
        env["PYTHONPATH"] = str(before)
    else:
        env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, __file__, "--one", scenario, "--url", url, "--tasks", str(tasks)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", help="a tree whose reliq runs the plain-before scenario")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--one", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        print(json.dumps(uvloop.run(one(args.url, "plain" if args.one == "plain-before" else args.one,
                                        args.tasks))))
        return
    from reliq.redis_server import RedisServer

    scenarios = [s for s in SCENARIOS if args.before or s != "plain-before"]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in scenarios}
    server = RedisServer(Path(tempfile.mkdtemp(prefix="reliq-flow-")), aof=False).start()
    try:
        for run in range(args.runs):
            for scenario in scenarios:
                r = run_one(server.url, scenario, args.tasks, args.before)
                results[scenario].append(r)
                print(f"run {run + 1} {scenario}: {r['rate']:,.0f} tasks/s, {r['redis_us']:.1f} us of redis-server "
                      f"a task, {r['commands']:.2f} commands a task", flush=True)
    finally:
        server.stop()
    table = spread_table(results, [("rate", "{:,.0f}"), ("redis_us", "{:.1f}"), ("commands", "{:.2f}")])
    print(table)
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    before = f" --before {args.before}" if args.before else ""
    write_section("flow", f"""## Flow control: what keys and rate limits cost a worker, {when}

Machine: {machine()}

| scenario | no-op tasks/s, one worker | redis-server CPU us a task | Redis commands a task |
|---|---|---|---|
{table}

- {args.tasks:,} no-op tasks a run, {args.runs} runs, the scenarios in turn; one burst worker
  process (uvloop, concurrency 64). `plain`: no key, no limit. `rated`: the type limited to
  10,000,000/s. `keys`: {KEYS:,} keys at key_concurrency 1. `plain-before`: `plain` with
  the reliq of `{args.before or '-'}`.
- Rerun: `.venv/bin/python bench/flow.py --tasks {args.tasks} --runs {args.runs}{before}`
""")


if __name__ == "__main__":
    main()
