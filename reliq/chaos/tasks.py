"""The task types of a chaos run, served by ``reliq work --app reliq.chaos.tasks``.

Every execution appends a start line and (unless its process dies first) an end line
to the execution log named by ``RELIQ_CHAOS_LOG``, each with one ``os.write`` on an
``O_APPEND`` descriptor: atomic, and whatever was written survives a SIGKILL. The audit
reads these lines to count duplicates and measure recovery after kills.

Line format (space separated): ``S <task id> <pid> <attempt> <unix ns>`` when a handler
starts, ``E <task id> <pid> <attempt> <unix ns> <ok|error>`` when it returns or raises.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from reliq.registry import Context, task

#: Environment variable naming the execution log of the run.
LOG_ENV = "RELIQ_CHAOS_LOG"

#: Task types of the load (the poison pill is injected as a fault).
NOOP, SLEEP, FLAKY, FAIL, POISON = "chaos.noop", "chaos.sleep", "chaos.flaky", "chaos.fail", "chaos.poison"
BLOCK = "chaos.block"
#: Tasks with a key (docs/flow-control.md): two of a key at once, so kills leave slots to give back.
KEYED = "chaos.keyed"
TYPES = (NOOP, SLEEP, FLAKY, FAIL, POISON, BLOCK, KEYED)

_fd: int | None = None


def _write(line: str) -> None:
    global _fd
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    if _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


def started(ctx: Context) -> None:
    """Log the start of an execution."""
    _write(f"S {ctx.task_id} {os.getpid()} {ctx.attempt} {time.time_ns()}\n")


def ended(ctx: Context, outcome: str) -> None:
    """Log the end of an execution (``ok`` or ``error``)."""
    _write(f"E {ctx.task_id} {os.getpid()} {ctx.attempt} {time.time_ns()} {outcome}\n")


class ChaosFailure(RuntimeError):
    """The failure the flaky and fail types raise on purpose."""


@task(NOOP)
async def noop(payload: Any, ctx: Context) -> None:
    """Do nothing."""
    started(ctx)
    ended(ctx, "ok")


@task(SLEEP)
async def sleep(payload: Any, ctx: Context) -> None:
    """Sleep ``payload["s"]`` seconds."""
    started(ctx)
    await asyncio.sleep(float(payload["s"]))
    ended(ctx, "ok")


@task(KEYED, key_concurrency=2)
async def keyed(payload: Any, ctx: Context) -> None:
    """Sleep ``payload["s"]`` seconds, at most two of a key at once across the fleet."""
    started(ctx)
    await asyncio.sleep(float(payload["s"]))
    ended(ctx, "ok")


@task(FLAKY)
async def flaky(payload: Any, ctx: Context) -> None:
    """Fail on attempts up to ``payload["fails"]``, then succeed.

    Attempts count crash re-runs too, so the task never fails more than ``fails`` times
    and succeeds while ``fails`` <= max_retries.
    """
    started(ctx)
    if ctx.attempt <= int(payload["fails"]):
        ended(ctx, "error")
        raise ChaosFailure(f"flaky: failing attempt {ctx.attempt} of {payload['fails']}")
    ended(ctx, "ok")


@task(FAIL)
async def fail(payload: Any, ctx: Context) -> None:
    """Always fail: must end in the dead-letter queue with reason ``error``."""
    started(ctx)
    ended(ctx, "error")
    raise ChaosFailure("fail: always fails")


@task(BLOCK)
async def block(payload: Any, ctx: Context) -> None:
    """Block the worker's event loop for ``payload["s"]`` seconds (sync I/O in an async handler).

    Past the lease, the worker must not be taken for dead: it must run exactly once.
    """
    started(ctx)
    time.sleep(float(payload["s"]))  # noqa: ASYNC251 - the mistake this fault stands for
    ended(ctx, "ok")


@task(POISON)
async def poison(payload: Any, ctx: Context) -> None:
    """Kill the worker process running it, every time: must be quarantined (``crashed``)."""
    started(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
