"""CPU time a no-op task costs one worker process, for two source trees alternating in one run.

    .venv/bin/python bench/tree_cost.py OLD_TREE [NEW_TREE] [--runs 3] [--tasks 100000]

For comparing a change's cost on the worker's hot path (e.g. a checkout of main against
this tree: ``git worktree add /tmp/main main``). One private redis-server; for each run
and each tree, N no-op tasks are enqueued, then one ``reliq work --burst`` started with
``PYTHONPATH=<tree>`` drains them, and its CPU time (user + system, from ``wait4``) is
divided by N. CPU time rather than a rate: it barely moves with the other processes of a
busy machine (bench/loopwatch_cost.py does the same for one tree's variants).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reliq.redis_server import RedisServer, free_port

HERE = Path(__file__).resolve().parent.parent


#: Enqueues the tasks with the reliq of the tree it runs in (``PYTHONPATH``): a tree writes the
#: records it reads (a tree of record format 1 cannot claim format 2's: docs/architecture.md).
ENQUEUE = """
import sys
from reliq.client import Client
with Client(sys.argv[1], queue=sys.argv[2]) as client:
    for _ in range(int(sys.argv[3]) // 1000):
        client.enqueue_many([("noop", None)] * 1000)
"""


def drain(url: str, queue: str, n: int, tree: Path) -> float:
    """Enqueue ``n`` no-op tasks with ``tree``'s client and drain them with one burst worker of ``tree``; its CPU
    seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", ENQUEUE, url, queue, str(n)], cwd=tree, env=env, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "reliq", "work", "--burst", "--redis-url", url, "--queue", queue,
                             "--log-level", "WARNING"], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=HERE)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory() as data:
        server = RedisServer(data, port=free_port(), aof=False).start()
        try:
            for run in range(args.runs):
                for name, tree in trees.items():
                    cpu = drain(server.url, f"cost-{run}-{name}", args.tasks, tree)
                    print(f"run {run + 1} {name:3} {tree}: {cpu / args.tasks * 1e6:.1f} us CPU a task", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
