"""Instructions redis-server executes to claim and to settle a task, counted by callgrind.

    .venv/bin/python bench/instructions.py [--tasks 12800] [--batch 64] [--waited none|other|all] [--priority-mix]
                                           [--no-write]

On a shared machine CPU time moves with the neighbours (the same commit measured 12.5
and 18.7 us a task an hour apart here); valgrind's instruction counts do not. So the
scripts' cost is judged by this: one private redis-server runs under
``valgrind --tool=callgrind`` (AOF off); ``--tasks`` no-op tasks are enqueued in
batches of 100; then claimed ``--batch`` at a time, each batch by its own worker id (so
every worker's list holds one batch, as in a running worker); then each batch is
settled as succeeded. Counters are dumped between the phases (``callgrind_control``),
so each phase's instructions are its own. Run with ``PYTHONPATH=<an older tree>`` to
count an older reliq the same way. Needs valgrind (Debian's ``valgrind``).

``--waited`` prices waiting (reliq/waiting.py) on the hot path: ``none``, nobody waits;
``other``, someone waits for one task that never ends, so the queue's waiters hash
exists while every other task runs; ``all``, every task is waited for (marked between
the enqueue and the claim, in a phase of its own), so each settle wakes its waiters.

``--priority-mix`` prices priorities (reliq/priorities.py): task i gets priority i % 10,
so the claims merge ten lists (the default without the option: every task of the
default priority, the path of a queue that never uses them). Under callgrind the enqueue
phase lasts longer than a priority step of the default aging (60 s / 9), so the lists
interleave and the claims switch between them every few tasks; ``--priority-aging 0``
(strict priorities) prices the merge without that.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402
from report import machine, write_section  # noqa: E402

from reliq.connection import connect  # noqa: E402
from reliq.queue import Outcome, Queue, make_spec  # noqa: E402
from reliq.redis_server import answers, free_port  # noqa: E402
from reliq.settings import Settings  # noqa: E402

PHASES = ("enqueue", "watch", "claim", "settle")
WAITED = ("none", "other", "all")


async def workload(url: str, pid: int, tasks: int, batch: int, waited: str = "none", mix: bool = False,
                   aging: float | None = None) -> None:
    """Enqueue, claim and settle, dumping callgrind's counters after each phase."""

    def dump(phase: str) -> None:
        callgrind.dump(pid, phase)

    redis = connect(url)
    settings = Settings(redis_url=url, queue="instructions")
    queue = Queue(redis, settings if aging is None else settings.replace(priority_aging=aging))
    await redis.ping()
    dump("start")  # what start-up cost stays out of the phases
    for start in range(0, tasks, 100):
        if mix:
            await queue.enqueue_specs([make_spec("noop", None, priority=i % 10) for i in range(start, start + 100)])
        else:
            await queue.enqueue_specs([make_spec("noop", None) for _ in range(100)])
    dump("enqueue")
    if waited == "other":
        [(other, _)] = await queue.enqueue_specs([make_spec("noop", None, delay=3600)])
        await queue.watch(other, "hub", 3_600_000)
    elif waited == "all":
        for task_id in await redis.lrange(queue.keys.pending, 0, -1):
            await queue.watch(task_id.decode(), "hub", 3_600_000)
    dump("watch")
    claimed = [(f"w{i}", (await queue.claim(f"w{i}", batch))[0]) for i in range(tasks // batch)]
    dump("claim")
    for worker, batch_tasks in claimed:
        applied, stale = await queue.settle(worker, [Outcome(t, "ok", "", 0) for t in batch_tasks])
        assert (applied, stale) == (len(batch_tasks), 0)
    dump("settle")
    await redis.aclose()


def count(tasks: int, batch: int, waited: str = "none", mix: bool = False,
          aging: float | None = None) -> dict[str, float]:
    """Instructions a task in each phase."""
    work = Path(tempfile.mkdtemp(prefix="reliq-callgrind-"))
    port = free_port()
    out = work / "callgrind.out"
    proc = subprocess.Popen([*callgrind.command(out), "redis-server",
                             "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server under callgrind did not start")
            time.sleep(0.2)
        asyncio.run(workload(f"redis://127.0.0.1:{port}/0", proc.pid, tasks, batch, waited, mix, aging))
    finally:
        proc.terminate()
        proc.wait(60)
    result = {phase: callgrind.instructions(out, i) / tasks for i, phase in enumerate(PHASES, start=2)}
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=12_800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--waited", choices=WAITED, default="none")
    parser.add_argument("--priority-mix", action="store_true")
    parser.add_argument("--priority-aging", type=float)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    callgrind.require()
    r = count(args.tasks, args.batch, args.waited, args.priority_mix, args.priority_aging)
    rows = [f"| {phase} | {r[phase]:,.0f} |" for phase in PHASES]
    rows.append(f"| claim + settle | {r['claim'] + r['settle']:,.0f} |")
    print("\n".join(rows))
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_section("instructions", f"""## Instructions redis-server runs a task, {when}

Machine: {machine()}

| phase | instructions a no-op task (callgrind) |
|---|---|
{chr(10).join(rows)}

- {args.tasks:,} tasks, enqueued 100 a call, claimed and settled {args.batch} a call (each batch by
  its own worker id). Repeatable to a fraction of a percent, whatever the machine does.
- Rerun: `.venv/bin/python bench/instructions.py --tasks {args.tasks} --batch {args.batch}`
""")


if __name__ == "__main__":
    main()
