"""What priorities cost: the plain path before and after them in one run, and mixed priorities.

    .venv/bin/python bench/priority_cost.py [--old REF] [--runs 3] [--tasks 100000] [--no-instructions] [--no-write]

The "old" side is a temporary git worktree of ``REF`` (default: the parent of the commit
that added ``reliq/priorities.py``, i.e. the tree just before priorities), run with
``PYTHONPATH`` pointing at it; the "new" side is this tree. One private redis-server
(AOF off) serves every run. In each run, each side in turn (the order swapped every run,
so neither always goes first):

- ``--tasks`` no-op tasks are enqueued 1,000 a call by that side's own Client, then one
  ``reliq work --burst`` of that side drains them. Its rate is tasks / (last finish - first
  start) read from the task records (Redis clock, so start-up stays out); its CPU a task
  is user + system time from ``wait4``, and redis-server's CPU a task over the drain is
  read from INFO cpu (both steadier than rates on a busy machine);
- then the new side again with every task of a priority from 0 to 9 (``i % 10``), the
  lists merged by the claim ("mixed"), and once more with an aging so small (10 ms) that
  the lists interleave and the claim switches lists all the time ("mixed, interleaved").

Then, unless ``--no-instructions``, ``bench/instructions.py`` counts redis-server's
instructions a task (callgrind) for the old and the new side, alternating, ``--runs``
times each, and once for the new side with mixed priorities (``--priority-mix``), strict
(``--priority-aging 0``: one list at a time) and aged by the default (under callgrind
the lists then interleave: see bench/instructions.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from report import machine, spread, write_section  # noqa: E402

from reliq.redis_server import RedisServer, free_port  # noqa: E402

ENQUEUE = """
import sys
from reliq.client import Client
from reliq.settings import Settings
url, queue, n, mix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "mix"
with Client(url, queue=queue, settings=Settings(redis_url=url, queue=queue)) as client:
    for start in range(0, n, 1000):
        if mix:
            client.enqueue_many([{"type": "noop", "priority": i % 10} for i in range(start, min(start + 1000, n))])
        else:
            client.enqueue_many([("noop", None)] * min(1000, n - start))
"""

SPAN = """
import sys, redis
from reliq.keys import QueueKeys
r, k = redis.Redis.from_url(sys.argv[1]), QueueKeys(sys.argv[2])
ids = r.lrange(k.succeeded, 0, -1)
pipe = r.pipeline(transaction=False)
for i in ids:
    pipe.hmget(k.task(i.decode()), "started_at", "finished_at")
rows = pipe.execute()
print(len(rows), min(int(s) for s, _ in rows), max(int(f) for _, f in rows))
"""


def old_ref() -> str:
    """The parent of the commit that added reliq/priorities.py."""
    first = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "reliq/priorities.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not first:
        sys.exit("no commit adds reliq/priorities.py here: give --old REF")
    return first[-1] + "^"


def drain(tree: Path, url: str, queue: str, n: int, mix: bool, aging: float | None = None) -> dict[str, float]:
    """Enqueue ``n`` no-op tasks with ``tree``'s client, drain them with its burst worker."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", ENQUEUE, url, queue, str(n), "mix" if mix else "plain"], env=env, check=True)
    extra = [] if aging is None else ["--priority-aging", str(aging)]
    redis_cpu = server_cpu(url)
    proc = subprocess.Popen([sys.executable, "-m", "reliq", "work", "--burst", "--redis-url", url, "--queue", queue,
                             "--log-level", "WARNING", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    redis_cpu = server_cpu(url) - redis_cpu
    if status != 0:
        raise RuntimeError(f"the burst worker of {tree} exited with {status}")
    out = subprocess.run([sys.executable, "-c", SPAN, url, queue], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    done, first, last = (int(v) for v in out)
    if done != n:
        raise RuntimeError(f"{tree}: {done} of {n} tasks succeeded")
    return {"rate": n / max(0.001, (last - first) / 1000), "cpu_us": (usage.ru_utime + usage.ru_stime) / n * 1e6,
            "redis_us": redis_cpu / n * 1e6}


def server_cpu(url: str) -> float:
    """CPU seconds redis-server has used (user + system)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def instructions(tree: Path, mix: bool, aging: float | None = None) -> dict[str, float]:
    """bench/instructions.py of this tree, with ``tree``'s reliq."""
    cmd = [sys.executable, str(HERE / "instructions.py"), "--no-write"] + (["--priority-mix"] if mix else [])
    cmd += [] if aging is None else ["--priority-aging", str(aging)]
    out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         check=True).stdout
    return {m.group(1): float(m.group(2).replace(",", "")) for m in re.finditer(r"\| ([a-z +]+) \| ([\d,]+) \|", out)}


def ratio(new: list[float], old: list[float]) -> str:
    return f"{(statistics.median(new) / statistics.median(old) - 1) * 100:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", help="the tree before priorities (a git ref) [the parent of reliq/priorities.py's "
                                      "first commit]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--no-instructions", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    ref = args.old or old_ref()
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    new_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="reliq-prio-"))
    old = work / "old"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), ref], cwd=ROOT, check=True)
    rows: dict[str, dict[str, list[float]]] = {k: {"rate": [], "cpu_us": [], "redis_us": []}
                                               for k in ("old", "new", "mixed", "interleaved")}
    counts: dict[str, list[dict[str, float]]] = {"old": [], "new": [], "mixed": [], "strict": []}
    server = RedisServer(work / "redis", port=free_port(), aof=False).start()
    try:
        for run in range(args.runs):
            sides = [("old", old), ("new", ROOT)]
            for name, tree in sides if run % 2 == 0 else sides[::-1]:
                r = drain(tree, server.url, f"p{run}{name}", args.tasks, mix=False)
                print(f"run {run} {name:11}: {r['rate']:,.0f} tasks/s, CPU a task {r['cpu_us']:.1f} us worker, "
                      f"{r['redis_us']:.1f} us redis-server", flush=True)
                for k, v in r.items():
                    rows[name][k].append(v)
            for name, aging in (("mixed", None), ("interleaved", 0.01)):
                r = drain(ROOT, server.url, f"p{run}{name}", args.tasks, mix=True, aging=aging)
                print(f"run {run} {name:11}: {r['rate']:,.0f} tasks/s, CPU a task {r['cpu_us']:.1f} us worker, "
                      f"{r['redis_us']:.1f} us redis-server", flush=True)
                for k, v in r.items():
                    rows[name][k].append(v)
        if not args.no_instructions:
            for run in range(args.runs):
                for name, tree in (("old", old), ("new", ROOT)) if run % 2 == 0 else (("new", ROOT), ("old", old)):
                    counts[name].append(instructions(tree, mix=False))
                    print(f"instructions {name}: {counts[name][-1]}", flush=True)
            counts["mixed"].append(instructions(ROOT, mix=True))
            print(f"instructions mixed: {counts['mixed'][-1]}", flush=True)
            counts["strict"].append(instructions(ROOT, mix=True, aging=0))
            print(f"instructions mixed, strict: {counts['strict'][-1]}", flush=True)
    finally:
        server.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)
    report(args, sha, new_sha, rows, counts)


def report(args: argparse.Namespace, sha: str, new_sha: str, rows: dict[str, dict[str, list[float]]],
           counts: dict[str, list[dict[str, float]]]) -> None:
    """Print the tables; write them to RESULTS.md unless --no-write."""
    def row(label: str, r: dict[str, list[float]], base: dict[str, list[float]] | None, against: str) -> str:
        if base is None:
            change = ""
        else:
            change = (f"{ratio(r['rate'], base['rate'])} rate, {ratio(r['cpu_us'], base['cpu_us'])} worker CPU, "
                      f"{ratio(r['redis_us'], base['redis_us'])} redis CPU {against}")
        return (f"| {label} | {spread(r['rate'])} | {spread(r['cpu_us'], '{:.1f}')} | "
                f"{spread(r['redis_us'], '{:.1f}')} | {change} |")

    lines = [
        row(f"plain no-op, before ({sha})", rows["old"], None, ""),
        row(f"plain no-op, after ({new_sha})", rows["new"], rows["old"], "vs before"),
        row("priorities 0-9 mixed, after", rows["mixed"], rows["new"], "vs plain"),
        row("... interleaved (aging 10 ms)", rows["interleaved"], rows["new"], "vs plain"),
    ]
    inst = []
    if counts["old"]:
        for phase in ("enqueue", "claim", "settle", "claim + settle"):
            before = [c[phase] for c in counts["old"]]
            after = [c[phase] for c in counts["new"]]
            mixed = [c[phase] for c in counts["mixed"]]
            strict = [c[phase] for c in counts["strict"]]
            inst.append(f"| {phase} | {spread(before)} | {spread(after)} | {ratio(after, before)} | {spread(strict)} | "
                        f"{spread(mixed)} |")
    print("\n".join(lines + inst))
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    inst_table = ""
    if inst:
        inst_table = f"""
Instructions redis-server runs a no-op task (callgrind, `bench/instructions.py`: 12,800
tasks, claimed and settled 64 a call), {args.runs} runs a side, alternating:

| phase | before | after | change | after, priorities 0-9 mixed, strict | ... aged 60 s, interleaving |
|---|---|---|---|---|---|
{chr(10).join(inst)}
"""
    write_section("priorities", f"""## Priorities: the plain path before and after, and mixed priorities, {when}

Machine: {machine()}

| workload | burst worker tasks/s | worker CPU a task, us | redis-server CPU a task, us | change |
|---|---|---|---|---|
{chr(10).join(lines)}

- {args.tasks:,} no-op tasks a run, enqueued 1,000 a call, drained by one `reliq work --burst`
  (concurrency 64); {args.runs} runs, the two sides alternating in one run on one redis-server
  (AOF off). Rate from the task records (first start to last finish, Redis clock); CPU from
  `wait4`. "Before" is a git worktree of {sha}, the tree just before priorities.
{inst_table}
- Rerun: `.venv/bin/python bench/priority_cost.py --runs {args.runs} --tasks {args.tasks}`
""")


if __name__ == "__main__":
    main()
