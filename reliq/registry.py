"""Task handlers: the ``@reliq.task`` decorator and the registry workers look types up in."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate

from reliq.limits import Layer, declared
from reliq.producer import P, R, T, TaskFunction
from reliq.retry import DEFAULT, Backoff, Errors, RetryPolicy
from reliq.settings import Retention
from reliq.type_defaults import NONE, TypeDefaults

#: Longest progress message kept (characters); a longer one is cut, with an ellipsis.
MAX_PROGRESS_MESSAGE = 500


class Context:
    """What a handler may want beyond its payload: its task (to make effects idempotent),
    whether its cancel was asked for, and a way to report progress.

    ``cancelled`` and :meth:`progress` are safe from any thread: an async handler, a
    plain one in the worker's thread pool, and one in a child process use them alike.
    """

    __slots__ = ("_cancel", "_report", "attempt", "task_id", "type")

    def __init__(self, task_id: str, type: str, attempt: int, *, cancel: threading.Event | None = None,
                 report: Callable[[float, str], None] | None = None) -> None:
        self.task_id = task_id
        self.type = type
        self.attempt = attempt
        self._cancel = cancel if cancel is not None else threading.Event()
        self._report = report

    def __repr__(self) -> str:
        return f"Context(task_id={self.task_id!r}, type={self.type!r}, attempt={self.attempt})"

    @property
    def cancelled(self) -> bool:
        """Whether a cancel of this task was asked for while it runs (docs/cancel.md).

        An async handler gets ``asyncio.CancelledError`` as well; a plain (thread)
        handler cannot be interrupted, so it should look at this now and then and stop
        (return or raise): the attempt then ends ``cancelled`` whatever it returns. In a
        child process (``isolation="process"``) it turns true too, and the child is
        killed once the worker's ``--cancel-grace`` has passed.
        """
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds (None: for ever) or until the cancel is asked for; return ``cancelled``.

        For thread handlers: a pause that a cancel cuts short (``if ctx.wait_cancelled(5): return``).
        """
        return self._cancel.wait(timeout)

    def progress(self, done: float, message: str | None = None) -> None:
        """Report how far the task has got: ``done`` from 0 to 1, and optionally what that means.

        A plain call, never awaited, from async and thread handlers alike: the worker
        writes the latest value in the background, at most once a second a task, and
        ``GET /task/{id}`` shows it (``progress``, ``progress_message``, ``progress_at``).
        Raises TypeError when ``done`` is not a number or ``message`` not a string, and
        ValueError when ``done`` is outside 0..1 (NaN included): a bug in the handler is
        said where it is, not hidden by a clamp. A message over
        :data:`MAX_PROGRESS_MESSAGE` characters is cut.
        """
        if isinstance(done, bool) or not isinstance(done, int | float):
            raise TypeError(f"progress must be a number from 0 to 1, not {type(done).__name__} {done!r}")
        if not 0 <= done <= 1:
            raise ValueError(f"progress must be a number from 0 to 1, not {done!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"a progress message must be a string (or None), not {type(message).__name__}")
        text = message or ""
        if len(text) > MAX_PROGRESS_MESSAGE:
            text = text[:MAX_PROGRESS_MESSAGE - 1] + "…"
        if self._report is not None:
            self._report(float(done), text)


#: Where a handler may run besides its default (async: the event loop; plain: a thread).
ISOLATIONS = ("process",)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler: the function, whether it is async, and its options."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    wants_context: bool
    timeout: float | None
    #: "process": run in the worker's pool of child processes (reliq/worker/procpool.py).
    isolation: str | None = None
    #: How this type keeps its succeeded records, where it differs from the queue's.
    retention: Retention | None = None
    #: The flow limits this type declares (rate limit, key concurrency; reliq/limits.py), or None.
    limits: Layer | None = None
    #: Which failures are retried, and after how long (reliq/retry.py).
    retry: RetryPolicy = DEFAULT
    #: What every enqueue of this type defaults to: max_retries, unique (reliq/type_defaults.py).
    defaults: TypeDefaults = NONE

    def call(self, payload: Any, ctx: Context | None) -> Any:
        """Call the function with the payload (and the context when it takes two arguments)."""
        return self.fn(payload, ctx) if self.wants_context else self.fn(payload)


class Registry:
    """Task type name -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, name: str, fn: Callable[..., Any], *, timeout: float | None = None,
            isolation: str | None = None, retention: Retention | None = None,
            limits: Layer | None = None, retry: RetryPolicy = DEFAULT, defaults: TypeDefaults = NONE) -> Handler:
        """Register ``fn`` for task type ``name`` (a later registration replaces it)."""
        if isinstance(fn, TaskFunction):  # already decorated: register the function itself
            fn = fn.fn
        if isolation is not None and isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)} (or left out), not {isolation!r}")
        if isolation == "process" and fn.__module__ == "__main__":
            raise ValueError(f"task {name!r}: isolation='process' needs a handler its child processes can import "
                             "by module path; define it in a module, not in __main__")
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        handler = Handler(
            name=name,
            fn=fn,
            is_async=asyncio.iscoroutinefunction(fn),
            wants_context=len(params) >= 2,
            timeout=timeout,
            isolation=isolation,
            retention=retention if retention and (retention.age, retention.count) != (None, None) else None,
            limits=limits,
            retry=retry,
            defaults=defaults,
        )
        self._handlers[name] = handler
        return handler

    def get(self, name: str) -> Handler | None:
        """The handler for ``name``, or None when the type is unknown."""
        return self._handlers.get(name)

    def names(self) -> list[str]:
        """The registered task types, sorted."""
        return sorted(self._handlers)

    def retentions(self) -> dict[str, Retention]:
        """The types that keep their succeeded records otherwise than their queue."""
        return {name: h.retention for name, h in self._handlers.items() if h.retention}

    def declared_limits(self) -> dict[str, Layer | None]:
        """Every registered type -> the limits it declares (None: none, which clears an old declaration)."""
        return {name: h.limits for name, h in self._handlers.items()}

    def defaults(self) -> dict[str, TypeDefaults]:
        """Each registered type's enqueue-side defaults (empty ones too: they clear a stale entry)."""
        return {name: h.defaults for name, h in self._handlers.items()}


#: The registry ``@reliq.task`` fills and ``reliq work`` serves.
REGISTRY = Registry()


def task(name: str, *, timeout: float | None = None, isolation: str | None = None,
         keep_succeeded: int | None = None, result_ttl: float | None = None,
         rate_limit: str | None = None, key_concurrency: int | None = None, ordered: bool = False,
         max_retries: int | None = None, backoff: Backoff = "exponential", retry_base: float | None = None,
         retry_cap: float | None = None, jitter: bool = True, retry_on: Errors | type[BaseException] | None = None,
         give_up_on: Errors | type[BaseException] = (), unique: bool = False,
         ) -> Callable[[Callable[Concatenate[T, P], R]], TaskFunction[T, P, R]]:
    """Register the decorated function as the handler of task type ``name``.

    The function takes ``(payload)`` or ``(payload, ctx)``; async functions run on the
    worker's event loop, plain ones in its thread pool. ``timeout`` (seconds) overrides
    the worker's default for this type. ``isolation="process"`` runs it in a child
    process instead (for code that may hang past its timeout or needs a core of its own):
    a timed-out child is killed, and the retry starts only once it is gone. Raise
    ``reliq.PermanentError`` to dead-letter the task without retries.

    ``keep_succeeded`` (records; 0 = none) and ``result_ttl`` (seconds) override, for
    this type, how many succeeded records its queue keeps and for how long (the worker's
    ``--keep-succeeded`` and ``result_ttl``; see docs/memory.md).

    Flow control, fleet-wide and enforced where tasks are claimed (docs/flow-control.md):
    ``rate_limit`` (``"100/s"``, ``"6/m"``, ``"1000/h"``, ``"5/10s"``, optionally
    ``" burst 20"``) caps how many tasks of the type start, across all workers;
    ``key_concurrency`` caps how many tasks of one ``key`` (given at enqueue) run at once,
    keys taking turns; ``ordered=True`` (with ``key_concurrency=1``) runs each key's tasks
    strictly in enqueue order, retries included. Workers write these at start-up; an
    operator's ``PUT /limits/{type}`` (or ``reliq limit set``) overrides them at run time.
    Raise ``reliq.RateLimited(retry_after=30)`` when the downstream refuses (an HTTP 429):
    the task goes back without spending an attempt and its type (its key, if it has one)
    is held that long.

    Retries (docs/retries.md): ``max_retries`` is the default of every enqueue of this
    type (an enqueue's own ``max_retries`` wins); ``backoff`` is ``"exponential"``,
    ``"linear"`` or a function ``f(attempt)`` / ``f(attempt, exc)`` returning seconds,
    from ``retry_base`` up to ``retry_cap`` (default: the worker's), jittered unless
    ``jitter=False``; only exceptions in ``retry_on`` (when given) and none in
    ``give_up_on`` are retried, the others dead-letter the task at once (reason
    ``permanent``). Raise ``reliq.Snooze(seconds)`` to run again later without spending
    an attempt. ``unique=True``: enqueuing a task of this type while one with the same
    payload is pending, scheduled, retrying or running returns that task's id instead
    (an enqueue's own ``unique``/``unique_key`` wins). Invalid options raise at once.

    The decorated name stays callable as the function, and becomes a producer:
    ``fn.enqueue(payload, **options)`` and ``await fn.aenqueue(...)`` (see
    :mod:`reliq.producer`), the payload type-checked against the first parameter's.
    """

    flow = declared(rate_limit, key_concurrency, ordered)  # ValueError at import for a bad option
    policy = RetryPolicy(backoff=backoff, base=retry_base, cap=retry_cap, jitter=jitter,
                         retry_on=retry_on if retry_on is None or isinstance(retry_on, tuple) else (retry_on,),
                         give_up_on=give_up_on if isinstance(give_up_on, tuple) else (give_up_on,))
    defaults = TypeDefaults(max_retries=max_retries, unique=unique)

    def register(fn: Callable[Concatenate[T, P], R]) -> TaskFunction[T, P, R]:
        REGISTRY.add(name, fn, timeout=timeout, isolation=isolation,
                     retention=Retention(age=result_ttl, count=keep_succeeded), limits=flow, retry=policy,
                     defaults=defaults)
        return TaskFunction(name, fn, defaults)

    return register
