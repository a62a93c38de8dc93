"""Task types every worker serves: noop, sleep, email-notification and fail."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from reliq.errors import PermanentError
from reliq.registry import task

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@task("noop")
async def noop(payload: Any) -> None:
    """Do nothing: the unit of throughput benchmarks."""


@task("sleep")
async def sleep(payload: Any) -> None:
    """Sleep for ``payload`` seconds (a number, or {"seconds": n})."""
    seconds = payload.get("seconds", 0) if isinstance(payload, dict) else payload
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise PermanentError(f"sleep needs a non-negative number of seconds, got {payload!r}")
    await asyncio.sleep(seconds)


@task("email-notification")
async def email_notification(payload: Any) -> dict[str, str]:
    """Pretend to send an email: check the address, take a few milliseconds."""
    address = payload.get("to") if isinstance(payload, dict) else payload
    if not isinstance(address, str) or not _EMAIL.match(address):
        raise PermanentError(f"not an email address: {address!r}")
    await asyncio.sleep(0.005)
    return {"sent_to": address}


@task("fail")
async def fail(payload: Any) -> None:
    """Always raise, to exercise retries and the dead-letter queue."""
    raise RuntimeError(f"fail task always fails (payload {payload!r})")
