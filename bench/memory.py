"""Redis memory a task takes, pending and finished, measured on a private redis-server.

    .venv/bin/python bench/memory.py [--tasks 1000000] [--payload 0] [--no-write]

Enqueues ``--tasks`` no-op tasks (1,000 a call; payload null, or a string of
``--payload`` bytes), reads ``used_memory``, then claims and settles every one as
succeeded (64 a call, as a worker does), and reads it again; also ``MEMORY USAGE`` of
one pending and one finished record. Run with ``PYTHONPATH=<an older tree>`` to measure
an older reliq the same way (the script uses only Queue's enqueue, claim and settle).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import machine, write_section  # noqa: E402

from reliq.connection import connect  # noqa: E402
from reliq.queue import Outcome, Queue, make_spec  # noqa: E402
from reliq.redis_server import RedisServer  # noqa: E402
from reliq.settings import Settings  # noqa: E402

MB = 1e6


async def measure(tasks: int, payload: Any) -> dict[str, float]:
    """Bytes of Redis memory: the empty queue, all pending, all succeeded; one record of each."""
    server = RedisServer(tempfile.mkdtemp(prefix="reliq-memory-"), aof=False).start()
    redis = connect(server.url)
    try:
        queue = Queue(redis, Settings(redis_url=server.url, queue="memory"))

        async def used() -> int:
            return int((await redis.info("memory"))["used_memory"])

        empty = await used()
        first = ""
        for i in range(0, tasks, 1000):
            ids = await queue.enqueue_specs([make_spec("noop", payload) for _ in range(min(1000, tasks - i))])
            first = first or ids[0][0]
        pending = await used()
        pending_record = await redis.memory_usage(queue.keys.task(first)) or 0
        done = 0
        while done < tasks:
            claimed, _ = await queue.claim("w", 64)
            await queue.settle("w", [Outcome(t, "ok", "", 0) for t in claimed])
            done += len(claimed)
        finished = await used()
        finished_record = await redis.memory_usage(queue.keys.task(first)) or 0
        return {"empty": empty, "pending": pending, "finished": finished,
                "pending_record": pending_record, "finished_record": finished_record}
    finally:
        await redis.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--payload", type=int, default=0, help="payload: a string of this many bytes (0 = null)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    payload = "x" * args.payload if args.payload else None
    started = time.monotonic()
    m = asyncio.run(measure(args.tasks, payload))
    n = args.tasks
    rows = [
        f"| {n:,} pending | {(m['pending'] - m['empty']) / MB:,.0f} MB | {(m['pending'] - m['empty']) / n:,.0f} |"
        f" {m['pending_record']:,.0f} |",
        f"| the same {n:,}, succeeded | {(m['finished'] - m['empty']) / MB:,.0f} MB |"
        f" {(m['finished'] - m['empty']) / n:,.0f} | {m['finished_record']:,.0f} |",
    ]
    print("\n".join(rows), f"\n({time.monotonic() - started:.0f} s)")
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    what = f"{args.payload} bytes" if args.payload else "null"
    write_section(f"memory-{args.payload}", f"""## Redis memory a task takes (payload {what}), {when}

Machine: {machine()}

| tasks | used_memory beyond an empty Redis | bytes a task | MEMORY USAGE of one record |
|---|---|---|---|
{chr(10).join(rows)}

- Rerun: `.venv/bin/python bench/memory.py --tasks {n} --payload {args.payload}`
""")


if __name__ == "__main__":
    main()
