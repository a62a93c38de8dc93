"""Task types for the loop-blocking and isolation tests, loaded by ``reliq work --app tests.apps.blocking``.

Each run appends ``S|E <task id> <pid> <attempt> <unix ns>`` lines to the file named by
``payload["log"]`` (one ``os.write`` on an O_APPEND descriptor: atomic, and kept when
the process is killed), so a test can count runs and compare their intervals.
"""

from __future__ import annotations

import os
import time
from typing import Any

from reliq import Context, task


def record(payload: Any, ctx: Context, mark: str) -> None:
    """Append one line about this run to the payload's log file."""
    fd = os.open(payload["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{mark} {ctx.task_id} {os.getpid()} {ctx.attempt} {time.time_ns()}\n".encode())
    finally:
        os.close(fd)


def runs(path: str) -> list[tuple[str, str, int, int, int]]:
    """The lines of a log file: (mark, task id, pid, attempt, unix ns)."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [(m, i, int(p), int(a), int(t)) for m, i, p, a, t in lines]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@task("block-loop")
async def block_loop(payload: Any, ctx: Context) -> str:
    """Hold the event loop with time.sleep (the mistake), on the first ``payload["attempts"]`` attempts."""
    record(payload, ctx, "S")
    if ctx.attempt <= payload.get("attempts", 1):
        time.sleep(payload["s"])  # noqa: ASYNC251 - on purpose: this is what the worker must survive
    record(payload, ctx, "E")
    return "done"


@task("thread-overrun")
def thread_overrun(payload: Any, ctx: Context) -> str:
    """A plain handler that sleeps ``payload["s"]`` seconds on its first attempt (past its timeout)."""
    record(payload, ctx, "S")
    if ctx.attempt == 1:
        time.sleep(payload["s"])
    record(payload, ctx, "E")
    return "done"


@task("proc-forever", isolation="process")
def proc_forever(payload: Any, ctx: Context) -> None:
    """Run until killed, in a child process; first note any child of an earlier run still alive ("L")."""
    for _, task_id, pid, attempt, _ in runs(payload["log"]):
        if pid != os.getpid() and _alive(pid):
            fd = os.open(payload["log"], os.O_WRONLY | os.O_APPEND)
            os.write(fd, f"L {task_id} {pid} {attempt} {time.time_ns()}\n".encode())
            os.close(fd)
    record(payload, ctx, "S")
    while True:
        time.sleep(0.05)


@task("proc-cpu", isolation="process")
def proc_cpu(payload: Any, ctx: Context) -> dict[str, float]:
    """Burn ``payload["s"]`` seconds of CPU in a child process; report the CPU time it took."""
    record(payload, ctx, "S")
    start = time.process_time()
    n = 0
    while time.process_time() - start < payload["s"]:
        n += 1
    record(payload, ctx, "E")
    return {"cpu_s": time.process_time() - start, "pid": os.getpid()}


@task("proc-crash", isolation="process")
def proc_crash(payload: Any, ctx: Context) -> str:
    """Kill the child process running it on the first attempt (os._exit), succeed on the next."""
    record(payload, ctx, "S")
    if ctx.attempt == 1:
        os._exit(7)
    record(payload, ctx, "E")
    return "survived"


@task("proc-async", isolation="process")
async def proc_async(payload: Any, ctx: Context) -> dict[str, int]:
    """An async handler in a child process: it gets an event loop of its own there."""
    record(payload, ctx, "S")
    return {"pid": os.getpid(), "echo": payload["n"]}
