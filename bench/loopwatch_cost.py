"""What the heartbeat thread and the loop watch cost a no-op task, in CPU time.

    .venv/bin/python bench/loopwatch_cost.py [--runs 2] [--tasks 100000]

One private redis-server; for each run and each variant, N no-op tasks are enqueued,
then one ``reliq work --burst`` drains them, and its CPU time (user + system, from
``wait4``) is divided by N. Variants, alternating in one run:

- ``default``: the loop watch ticks and the heartbeat thread looks at it 10 times a second;
- ``slowed``: both once every 2 s (the heartbeat itself unchanged), which isolates their cost.

CPU time rather than a rate: it barely moves with the other processes of a busy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from reliq.client import Client
from reliq.redis_server import RedisServer, free_port

SLOWED = ("import sys, reliq.worker.heartbeat as h, reliq.loopwatch as l; h.LOOK_S = 2.0; "
          "l.LoopWatch.__init__.__defaults__ = (2.0,); from reliq.cli import main; main()")


def drain(url: str, queue: str, n: int, slowed: bool) -> tuple[float, float]:
    """Enqueue ``n`` no-op tasks, drain them with one burst worker; (CPU s, wall s) of the worker."""
    with Client(url, queue=queue) as client:
        for _ in range(n // 1000):
            client.enqueue_many([("noop", None)] * 1000)
    cmd = [sys.executable, "-c", SLOWED] if slowed else [sys.executable, "-m", "reliq"]
    start = time.monotonic()
    proc = subprocess.Popen([*cmd, "work", "--burst", "--redis-url", url, "--queue", queue, "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        server = RedisServer(data, port=free_port(), aof=False).start()
        try:
            for run in range(args.runs):
                for variant in ("default", "slowed"):
                    cpu, wall = drain(server.url, f"lw{run}{variant}", args.tasks, variant == "slowed")
                    print(f"{variant:8} run {run}: {cpu / args.tasks * 1e6:.1f} us CPU a task, "
                          f"{args.tasks / wall:,.0f} tasks/s", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
