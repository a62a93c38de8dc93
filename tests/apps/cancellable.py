"""Task types for the cancel and progress tests, loaded by ``reliq work --app tests.apps.cancellable``.

Each run appends ``<mark> <task id> <pid> <attempt> <unix ns>`` lines to the file named
by ``payload["log"]`` (tests/apps/blocking.py: ``record``): S started, C saw its cancel,
E ended by itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from reliq import Context, task
from tests.apps.blocking import record


def _report_until_cancelled(payload: Any, ctx: Context) -> str:
    """Report progress every 10 ms and stop as soon as the cancel is asked for (at most 60 s)."""
    record(payload, ctx, "S")
    deadline = time.monotonic() + payload.get("s", 60)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        ctx.progress(min(1.0, n / 1000), f"{n} steps")
        if ctx.wait_cancelled(0.01):
            record(payload, ctx, "C")
            return "stopped early"
    record(payload, ctx, "E")
    return "done"


@task("thread-poll")
def thread_poll(payload: Any, ctx: Context) -> str:
    """A plain (thread) handler that looks at ``ctx.cancelled`` between steps."""
    return _report_until_cancelled(payload, ctx)


@task("proc-poll", isolation="process")
def proc_poll(payload: Any, ctx: Context) -> str:
    """The same in a child process: ``ctx.cancelled`` turns true there too, and progress reaches Redis."""
    return _report_until_cancelled(payload, ctx)


@task("proc-deaf", isolation="process")
def proc_deaf(payload: Any, ctx: Context) -> None:
    """A child-process handler that never looks at ``ctx.cancelled``: killed once the grace is over."""
    record(payload, ctx, "S")
    while True:
        time.sleep(0.05)


@task("async-progress")
async def async_progress(payload: Any, ctx: Context) -> str:
    """Report ``payload["n"]`` steps over ``payload["s"]`` seconds from the event loop."""
    record(payload, ctx, "S")
    n = payload["n"]
    for i in range(1, n + 1):
        ctx.progress(i / n, f"{i} of {n} rows")
        await asyncio.sleep(payload["s"] / n)
    record(payload, ctx, "E")
    return "done"
