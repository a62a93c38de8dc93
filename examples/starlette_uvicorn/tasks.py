"""The task the Starlette example enqueues: ``reliq work --app tasks`` runs it."""

from __future__ import annotations

import asyncio

import reliq


@reliq.task("make-thumbnail", timeout=30)
async def make_thumbnail(payload: dict[str, int | str], ctx: reliq.Context) -> dict[str, int | str]:
    """Pretend to resize an uploaded image; async handlers run on the worker's event loop."""
    await asyncio.sleep(0)
    return {"image": payload["image"], "width": 128, "attempt": ctx.attempt}
