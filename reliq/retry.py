"""Per-type retry policies (``@reliq.task(..., backoff=, retry_on=, give_up_on=)``), decided by the worker.

When a handler fails, the worker asks its type's :class:`RetryPolicy` two things: is
this error retried at all (``retry_on``, ``give_up_on``), and how long until the next
try. An error the policy does not retry is settled ``permanent`` (dead at once, with its
error), as a :class:`~reliq.errors.PermanentError` is; otherwise the delay goes to the
settle script, which schedules the retry while failures <= the task's ``max_retries``
and dead-letters it after. How many retries a task gets is the task's own
``max_retries``, fixed at enqueue (the type's default, see :mod:`reliq.type_defaults`).

A policy is checked when the decorator runs, so a typo fails at import with a message
saying what is wrong, not at the first failure in production.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reliq.errors import describe_error
from reliq.queue import MAX_DELAY_S

log = logging.getLogger(__name__)

#: The named backoffs: n is the failure the next try follows (1 for the first retry).
#: exponential: base * 2**(n-1); linear: base * n; each capped at ``cap``.
BACKOFFS = ("exponential", "linear")

#: A backoff: one of BACKOFFS, or a function of (failure number) or (failure number, exception) -> seconds.
Backoff = str | Callable[..., float]
Errors = tuple[type[BaseException], ...]


def _errors(name: str, value: Any) -> Errors | None:
    """``value`` as a tuple of exception classes (one class alone is taken as a tuple of one)."""
    if value is None:
        return None
    items = (value,) if isinstance(value, type) else value
    if not isinstance(items, tuple | list | set | frozenset) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in items):
        raise TypeError(f"{name} must be an exception class or a tuple of them, not {value!r}")
    return tuple(items)


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_DELAY_S:
        raise ValueError(f"{name} must be a number of seconds above 0 and at most {MAX_DELAY_S:g}, not {value!r}")
    return float(value)


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments a backoff function takes: 2 (failure, exception) or 1 (failure)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it with one argument
        return 1
    for n in (2, 1):
        try:
            sig.bind(*range(n))
            return n
        except TypeError:
            continue
    raise TypeError(f"a backoff function must take (attempt) or (attempt, exception) and return seconds; "
                    f"{fn!r} takes {sig}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a task type is retried. Every field left out takes the worker's default.

    ``backoff`` is ``"exponential"`` (the default: ``base * 2**(n-1)``), ``"linear"``
    (``base * n``), or a function ``f(n)`` or ``f(n, exc)`` returning the seconds before
    retry n, which follows failure n (1 for the first retry). ``base`` and ``cap``
    default to the worker's ``--retry-base`` and ``--retry-cap``; the named backoffs
    get equal jitter (half the delay fixed, half random) unless ``jitter=False``; what
    a function returns is used as it is (capped at :data:`MAX_DELAY_S`).

    ``retry_on``: only these exceptions are retried (default: all). ``give_up_on``: these
    never are. An exception not retried dead-letters the task at once (reason
    ``permanent``, its error as ``last_error``). A task timeout is a ``TimeoutError``.
    """

    backoff: Backoff = "exponential"
    base: float | None = None
    cap: float | None = None
    jitter: bool = True
    retry_on: Errors | None = None
    give_up_on: Errors = ()
    _arity: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if callable(self.backoff):
            object.__setattr__(self, "_arity", _arity(self.backoff))
        elif self.backoff not in BACKOFFS:
            raise ValueError(f"backoff must be one of {', '.join(map(repr, BACKOFFS))} or a function of the "
                             f"attempt number returning seconds, not {self.backoff!r}")
        object.__setattr__(self, "base", _positive("retry_base", self.base))
        object.__setattr__(self, "cap", _positive("retry_cap", self.cap))
        if not isinstance(self.jitter, bool):
            raise TypeError(f"jitter must be True or False, not {self.jitter!r}")
        object.__setattr__(self, "retry_on", _errors("retry_on", self.retry_on))
        object.__setattr__(self, "give_up_on", _errors("give_up_on", self.give_up_on) or ())

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be retried (``give_up_on`` wins over ``retry_on``)."""
        if isinstance(exc, self.give_up_on):
            return False
        return self.retry_on is None or isinstance(exc, self.retry_on)

    def delay_s(self, failures: int, exc: BaseException, base: float, cap: float) -> float:
        """Seconds before the retry that follows failure number ``failures`` (1 for the first).

        ``base`` and ``cap`` are the worker's, for what the policy leaves out. A backoff
        function that raises or returns no usable number is logged, and the exponential
        backoff stands in: the task is retried all the same, never lost to a bad policy.
        """
        base, cap = self.base or base, self.cap or cap
        if callable(self.backoff):
            try:
                seconds = self.backoff(failures, exc) if self._arity == 2 else self.backoff(failures)
                if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
                    raise ValueError(f"returned {seconds!r}, not a number of seconds >= 0")
                return min(float(seconds), MAX_DELAY_S)
            except Exception as err:
                log.warning("backoff %r failed for attempt %d (%s); using the exponential backoff instead",
                            self.backoff, failures, describe_error(err))
                return _jittered(_exponential(failures, base, cap))
        delay = _exponential(failures, base, cap) if self.backoff == "exponential" else min(cap, base * failures)
        return _jittered(delay) if self.jitter else delay

    def delay_ms(self, failures: int, exc: BaseException, base: float, cap: float) -> int:
        """:meth:`delay_s` in whole milliseconds, as the settle script takes it."""
        return int(self.delay_s(failures, exc, base, cap) * 1000)


def _exponential(failures: int, base: float, cap: float) -> float:
    # 2**n overflows a float past n ~ 1,000; any n past 64 is capped anyway
    return min(cap, base * 2.0 ** min(failures - 1, 64))


def _jittered(delay: float) -> float:
    """Equal jitter: half the delay fixed, half random, so retries of many tasks that failed
    together spread out but never come back sooner than half the backoff."""
    return delay / 2 + random.uniform(0, delay / 2)


#: The policy of a type that sets none: exponential from the worker's retry_base to retry_cap.
DEFAULT = RetryPolicy()


def retry_delay_ms(failures: int, base: float, cap: float) -> int:
    """The default backoff before the retry after failure ``failures``: base * 2**(n-1), capped, jittered."""
    return int(_jittered(_exponential(failures, base, cap)) * 1000)
