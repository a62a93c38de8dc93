"""Handlers for the flow-control tests (tests/test_flow.py): each run appends lines to a log.

``reliq work --app tests.apps.flowing``. The payload is ``{"log": path, ...}``; a run writes
``S <task id> <key> <attempt> <wall time>`` when it starts and ``E ...`` when it ends well
(one ``write`` of a line in append mode: lines from several processes do not interleave).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import reliq


def _line(payload: dict[str, Any], ctx: reliq.Context, kind: str) -> None:
    if "log" in payload:
        with open(payload["log"], "a") as out:
            out.write(f"{kind} {ctx.task_id} {payload.get('key', '-')} {ctx.attempt} {time.time():.6f}\n")


@reliq.task("rated", rate_limit="50/s")
async def rated(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """Fifty starts a second, fleet-wide: record the start."""
    _line(payload, ctx, "S")


@reliq.task("keyed", key_concurrency=2)
async def keyed(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """At most two of a key at once: record start and end around a sleep."""
    _line(payload, ctx, "S")
    await asyncio.sleep(payload.get("sleep", 0))
    _line(payload, ctx, "E")


@reliq.task("ordered", key_concurrency=1, ordered=True)
async def ordered(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """One at a time a key, in order; fails its first ``fail`` attempts."""
    _line(payload, ctx, "S")
    await asyncio.sleep(payload.get("sleep", 0))
    if ctx.attempt <= payload.get("fail", 0):
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    _line(payload, ctx, "E")


@reliq.task("refused")
async def refused(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """Raise RateLimited the first time a task with ``"refuse"`` runs (a marker file says it did)."""
    _line(payload, ctx, "S")
    if "refuse" in payload:
        try:
            os.close(os.open(payload["refuse"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            _line(payload, ctx, "R")
            raise reliq.RateLimited(retry_after=payload["retry_after"])
    _line(payload, ctx, "E")


@reliq.task("fair")
async def fair(payload: dict[str, Any], ctx: reliq.Context) -> None:
    """A no-op of any key; records its start only when it has a log (the big key's tasks do not)."""
    _line(payload, ctx, "S")

