"""Running a background step every so often, riding out Redis outages (reliq/outage.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from reliq.outage import NEVER, RECONNECT_CAP, Outage

log = logging.getLogger(__name__)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], patience: float = 10.0) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    On Python 3.11 a cancellation that lands while redis-py's own timeout fires can be
    lost, so a task is cancelled again until it really ends: a fetcher that lived on
    after shutdown could claim work no reaper would look for.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + patience
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.05)
        if pending and asyncio.get_running_loop().time() > deadline:
            log.error("%d task(s) would not stop: %s", len(pending), [t.get_name() for t in pending])
            return


async def every(interval: float, step: Callable[[], Awaitable[object]], name: str,
                reconnect_cap: float = RECONNECT_CAP) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled.

    When Redis is unreachable the step is retried with backoff (at most ``reconnect_cap``
    seconds apart) and the outage is logged once; any other error is logged with its
    traceback and the step runs again ``interval`` seconds later.
    """
    outage = Outage(name, log, give_up=NEVER, cap=reconnect_cap)
    while True:
        try:
            await outage.call(step)
        except Exception:
            log.exception("%s failed; trying again in %.1fs", name, interval)
        await asyncio.sleep(interval)
