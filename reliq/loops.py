"""Running a background step every so often, riding out Redis outages with backoff."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from reliq.connection import UNAVAILABLE, describe

log = logging.getLogger(__name__)


#: The longest a loop waits between two tries to reach Redis again (seconds).
RECONNECT_CAP = 5.0


class Backoff:
    """Growing, jittered delays for reconnecting: 50 ms doubling up to ``cap`` seconds."""

    def __init__(self, first: float = 0.05, cap: float = RECONNECT_CAP) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try (and count this failure)."""
        self.failures += 1
        delay = min(self.cap, self.first * 2 ** (self.failures - 1))
        return float(delay / 2 + random.uniform(0, delay / 2))

    def reset(self) -> None:
        """Redis answered: start from the shortest delay next time."""
        self.failures = 0


def reraise_if_cancelled() -> None:
    """Raise CancelledError if someone cancelled the running task.

    redis-py can turn a cancellation in the middle of a command into a connection
    error; a loop that catches those to retry must not swallow its own cancellation.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
    seconds apart) and a warning is logged once per outage; any other error is logged
    with its traceback and the loop goes on.
    """
    backoff = Backoff(cap=reconnect_cap)
    while True:
        try:
            await step()
        except UNAVAILABLE as exc:
            reraise_if_cancelled()
            if backoff.failures == 0:
                log.warning("%s: %s; retrying with backoff", name, describe(exc))
            await asyncio.sleep(backoff.next())
            continue
        except Exception:
            reraise_if_cancelled()
            log.exception("%s failed; trying again in %.1fs", name, interval)
        if backoff.failures:
            log.info("%s: Redis is back", name)
            backoff.reset()
        await asyncio.sleep(interval)
