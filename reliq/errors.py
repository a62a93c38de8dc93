"""Every exception reliq raises, in one flat module; and which of them a script's refusal is."""

from __future__ import annotations

from collections.abc import Sequence

from reliq.formats import Code


class ReliqError(Exception):
    """Base class of reliq's own errors."""


class ConfigError(ReliqError):
    """A setting is missing or wrong; the message says which and how to fix it."""


class InvalidTask(ReliqError):
    """A task submitted for enqueueing is malformed (the API turns this into a 400)."""


class TaskNotFound(ReliqError):
    """No record exists for the task id (never created, or expired)."""


class TooManyWaiters(ReliqError):
    """A process already waits for ``max_waiters`` tasks to end; this wait was refused."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"already waiting for {limit} tasks at once (max_waiters); retry later")
        self.limit = limit


class CancelRefused(ReliqError):
    """The task has already finished, so it cannot be cancelled."""

    def __init__(self, state: str) -> None:
        super().__init__(f"task is {state}; it has already finished, so there is nothing to cancel")
        self.state = state


class QueueFull(ReliqError):
    """Admission control: the queue holds ``max_pending`` tasks already; nothing was enqueued."""

    def __init__(self, queue: str, pending: int, limit: int) -> None:
        super().__init__(f"queue {queue!r} has {pending} pending tasks, at its limit of {limit}; retry later")
        self.pending = pending
        self.limit = limit


class RedisFull(ReliqError):
    """Redis is (nearly) out of memory: nothing was enqueued; retry once workers made room.

    ``used`` and ``limit`` are Redis's used_memory and maxmemory in bytes (0 when Redis
    itself refused the write and they were not read); ``ratio`` the admission threshold.
    """

    def __init__(self, queue: str, used: int = 0, limit: int = 0, ratio: float = 1.0) -> None:
        where = (f"{used / 2**20:.1f} MiB used of its {limit / 2**20:.1f} MiB maxmemory, past the "
                 f"{ratio:.0%} admission limit" if limit else "maxmemory reached")
        super().__init__(f"Redis is out of memory ({where}): queue {queue!r} takes no new tasks until "
                         "workers drain it or maxmemory is raised; retry later")
        self.queue = queue
        self.used = used
        self.limit = limit


class NotReplicated(ReliqError):
    """The tasks are on the primary, but fewer replicas than asked confirmed them in time."""

    def __init__(self, results: Sequence[tuple[str, int]], acked: int, wanted: int) -> None:
        super().__init__(f"enqueued on the primary, but {acked} of {wanted} replica(s) confirmed it in time")
        self.results = results
        self.acked = acked


class PermanentError(ReliqError):
    """Raise from a handler to dead-letter the task at once, without retries."""


class RateLimited(ReliqError):
    """Raise from a handler when the downstream refused for now (an HTTP 429, a quota).

    The task goes back without spending an attempt, and its type (or, for a task with a
    key, only its key) is held for ``retry_after`` seconds across the fleet (default 1,
    at most :data:`MAX_RETRY_AFTER_S`; see docs/flow-control.md).
    """

    def __init__(self, retry_after: float | None = None, message: str = "") -> None:
        after = 1.0 if retry_after is None else float(retry_after)
        if not after >= 0:  # NaN too
            after = 1.0
        self.retry_after = min(after, MAX_RETRY_AFTER_S)
        super().__init__(message or f"rate limited: retry after {self.retry_after:g}s")


#: The longest hold a RateLimited may ask for: a day.
MAX_RETRY_AFTER_S = 86_400.0


class HandlerFailed(ReliqError):
    """A handler failed outside the worker's process (``isolation="process"``).

    The message is the error as the task records it: the child's exception
    (``ValueError: ...``), or how the child process died. ``retried`` is False when the
    type's retry policy (applied in the child, which knows the exception's class) does
    not retry it.
    """

    def __init__(self, message: str, retried: bool = True) -> None:
        super().__init__(message)
        self.retried = retried


class GaveUp(ReliqError):
    """Redis stayed unavailable until the caller's give-up rule ended the wait (``reliq.outage``).

    Its ``__cause__`` is the last Redis error (None when stopped before the first try).
    """


def script_error(code: int, *, queue: str = "", task_id: str = "", state: str = "", pending: int = 0,
                 limit: int = 0, name: str = "") -> ReliqError:
    """The exception a script's refusal ``code`` (a negative :class:`reliq.formats.Code`) stands for.

    The keywords are what the caller knows of the call, for the message: the queue and the
    admission ``limit`` (QUEUE_FULL, with the ``pending`` count the script replied), the
    ``task_id`` (NO_TASK), the ``state`` the script replied (NOT_CANCELLABLE), the schedule's
    ``name`` (NO_SCHEDULE).
    """
    match code:
        case Code.QUEUE_FULL:
            return QueueFull(queue, pending, limit)
        case Code.NO_TASK:
            return TaskNotFound(task_id)
        case Code.NOT_CANCELLABLE:
            return CancelRefused(state)
        case Code.NO_SCHEDULE:
            return ScheduleNotFound(name)
    raise ValueError(f"script code {code!r} is not a refusal")


def describe_error(exc: BaseException) -> str:
    """An exception as a task records it: ``Type: message``, encodable, at most 2,000 characters."""
    # Lone surrogates (bytes decoded with surrogateescape) cannot be encoded for Redis:
    # escaped here, or the settle of the whole batch would fail on every retry.
    text = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 2000 else text[:2000] + "…"


class Snooze(ReliqError):
    """Raise from a handler to run the task again in ``seconds``, without spending an attempt.

    The task waits in the delayed set, state ``scheduled``, and is counted ``snoozed`` (not
    failed): its attempts and failures stay as they were before this run.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
            raise ValueError(f"Snooze takes a number of seconds >= 0, not {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class InvalidSchedule(InvalidTask):
    """A periodic schedule's definition is malformed (bad cron, time zone, name...): a 400, nothing written."""


class ScheduleNotFound(ReliqError):
    """No schedule of that name exists in the queue."""
