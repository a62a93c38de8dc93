"""Riding out a Redis outage: the one way every loop waits for Redis to come back.

``await outage.call(fn)`` runs ``fn`` (a Redis call) until it returns. While Redis is
unavailable (:data:`reliq.connection.UNAVAILABLE`) it tries again after a growing,
jittered delay capped at ``cap``; it logs one warning when the outage starts and one
line when Redis answers again, however many tries lie between; a cancellation is never
mistaken for an outage (:func:`reraise_if_cancelled`); and when to stop trying is the
caller's explicit rule (:class:`GiveUp`), after which it raises :class:`GaveUp`.

An :class:`Outage` keeps its state between calls, so a loop that makes one call a round
(the fetcher, the settler, :func:`reliq.loops.every`) logs an outage once across all
the rounds it lasts. The heartbeat thread, which cannot await, uses the same state
through :meth:`Outage.failed` and :meth:`Outage.answered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from reliq.connection import UNAVAILABLE, describe_outage
from reliq.errors import GaveUp

T = TypeVar("T")

#: The longest a loop waits between two tries to reach Redis again (seconds).
RECONNECT_CAP = 5.0


class Backoff:
    """Growing, jittered delays for reconnecting: ``first`` seconds doubling up to ``cap``.

    Half of each delay is fixed and half random, so loops that lost Redis together do
    not all come back in the same instant.
    """

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


@dataclass(frozen=True)
class GiveUp:
    """When an :class:`Outage` stops trying: never (:data:`NEVER`) unless a field says so.

    ``after_s``: seconds after a call started, counted from its first try; the last wait
    is cut to end then, so one more try lands on the deadline. ``when``: once this event
    is set, checked before every try; setting it also ends a wait between two tries.
    """

    after_s: float | None = None
    when: asyncio.Event | None = None


#: Keep trying until Redis answers (or the task is cancelled).
NEVER = GiveUp()


class Outage:
    """One loop's view of Redis outages: how long it backs off, what it logs, when it gives up.

    ``name`` starts every line it logs, on ``logger`` (the caller's, so that lines keep
    their module's logger). With ``retry_other_errors``, any other exception is logged
    with its traceback every time and retried with the same backoff (a loop that must
    never die, like the settler); without it, it propagates at once.
    """

    def __init__(self, name: str, logger: logging.Logger, *, give_up: GiveUp, cap: float = RECONNECT_CAP,
                 retry_other_errors: bool = False) -> None:
        self.name = name
        self.log = logger
        self.give_up = give_up
        self.backoff = Backoff(cap=cap)
        self.retry_other_errors = retry_other_errors
        #: The last error of the outage in progress; None while Redis answers.
        self.down: BaseException | None = None

    async def call(self, fn: Callable[[], Awaitable[T]], note: str = "retrying with backoff") -> T:
        """Run ``fn`` until it returns, and return what it returns.

        ``note`` ends the warning that opens an outage (what waits meanwhile). Raises
        :class:`GaveUp` (its ``__cause__`` the last error) when the give-up rule says so.
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.give_up.after_s is None else loop.time() + self.give_up.after_s
        last: BaseException | None = None
        while True:
            if self.give_up.when is not None and self.give_up.when.is_set():
                raise GaveUp(f"{self.name}: stopped while Redis was unavailable") from last
            try:
                result = await fn()
            except UNAVAILABLE as exc:
                reraise_if_cancelled()
                delay, last = self.failed(exc, note), exc
            except Exception as exc:
                reraise_if_cancelled()
                if not self.retry_other_errors:
                    raise
                self.log.exception("%s failed; %s", self.name, note)
                delay, last = self.backoff.next(), exc
            else:
                self.answered()
                return result
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise GaveUp(f"{self.name}: Redis unavailable for over {self.give_up.after_s:g}s") from last
                delay = min(delay, left)
            await self._wait(delay)

    def failed(self, exc: BaseException, note: str = "retrying with backoff") -> float:
        """Note a failed try (warning once an outage); return how long to wait before the next."""
        if self.down is None:
            said = (describe_outage(exc) if isinstance(exc, UNAVAILABLE)
                    else f"Redis error ({type(exc).__name__}: {exc})")
            self.log.warning("%s: %s; %s", self.name, said, note)
        self.down = exc
        return self.backoff.next()

    def answered(self) -> None:
        """Note a try that succeeded: log that Redis is back if it was away; start the backoff afresh."""
        if self.down is not None:
            self.log.info("%s: Redis is back", self.name)
            self.down = None
        self.backoff.reset()

    async def _wait(self, delay: float) -> None:
        if self.give_up.when is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):  # the event ends the wait early
            await asyncio.wait_for(self.give_up.when.wait(), delay)
