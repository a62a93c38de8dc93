"""Handlers for the pause tests: each run appends "<task id> <wall time>" to a file, then sleeps.

``reliq work --app tests.apps.pausable``; the payload is ``{"log": path, "sleep": seconds}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import reliq


async def _record(payload: dict[str, Any], ctx: reliq.Context) -> None:
    with open(payload["log"], "a") as out:  # noqa: ASYNC230 (a line, to record the start at once)
        out.write(f"{ctx.task_id} {time.time():.6f}\n")
    await asyncio.sleep(payload.get("sleep", 0))


@reliq.task("slow")
async def slow(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """Record the start, then sleep."""
    await _record(payload, ctx)


@reliq.task("other")
async def other(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """The same under another type, to pause one type and not the other."""
    await _record(payload, ctx)
