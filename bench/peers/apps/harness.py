"""What every library's bench app shares: the run counter and the enqueue spreader.

The counter counts no-op runs inside a worker process without one extra Redis command.

Each worker process writes ``<count> <first> <last>`` (wall-clock seconds of its first
and last run) to ``$BENCH_COUNT_DIR/count.<pid>`` every 50 ms; run.py sums the files.
The same counter sits in every library's no-op, reliq's included, so every figure is
measured the same way: tasks / (last finish - first start), worker start-up excluded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE = "bench"

_lock = threading.Lock()
_state = {"count": 0, "first": 0.0, "last": 0.0}
_reporter: threading.Thread | None = None


def hit() -> None:
    """Record one run of the no-op task."""
    global _reporter
    now = time.time()
    with _lock:
        if _state["count"] == 0:
            _state["first"] = now
        _state["count"] += 1
        _state["last"] = now
        if _reporter is None:  # started on the first run: works in forked children too
            _reporter = threading.Thread(target=_report, daemon=True)
            _reporter.start()


def _report() -> None:
    folder = os.environ["BENCH_COUNT_DIR"]
    path = os.path.join(folder, f"count.{os.getpid()}")
    written = -1
    while True:
        with _lock:
            count, first, last = _state["count"], _state["first"], _state["last"]
        if count != written:
            with open(path + ".tmp", "w") as f:
                f.write(f"{count} {first} {last}")
            os.replace(path + ".tmp", path)
            written = count
        time.sleep(0.05)


async def spread(n: int, concurrency: int, call) -> None:
    """Await ``call()`` n times, ``concurrency`` at a time (the async libraries' enqueue)."""
    left = iter(range(n))

    async def sender() -> None:
        for _ in left:
            await call()

    await asyncio.gather(*(sender() for _ in range(concurrency)))
