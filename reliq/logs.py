"""Log output of the CLI's roles: plain text, or one JSON object a line (``--log-format json``).

Only the CLI configures logging (:func:`configure`); everything else logs through
``logging.getLogger(__name__)``. In JSON every line carries ``time``, ``level``,
``logger`` and ``message``, then the fields that apply: ``task_id``, ``type``, ``queue``,
``attempt`` and ``worker``, and whatever else a call passed in ``extra``. Code that knows
the fields passes them in ``extra``; code that does not (a handler's own logs, a
worker's loops) gets them from context variables the worker sets: its id and queue for
each loop, the task for each run. Setting the task costs one ``ContextVar.set`` a run
(about 60 ns); the fields are read from it only when a line is written.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import orjson

#: The output formats of ``--log-format``.
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RunningTask(Protocol):
    """What a log line needs of the task being run (:class:`reliq.queue.Claimed` has it)."""

    id: str
    type: str
    queue: str
    attempts: int


_fields: ContextVar[dict[str, Any] | None] = ContextVar("reliq_log_fields", default=None)  # replaced, never mutated
_task: ContextVar[RunningTask | None] = ContextVar("reliq_log_task", default=None)


@contextlib.contextmanager
def fields(**values: Any) -> Iterator[None]:
    """Add ``values`` to the lines logged in this context, and to asyncio tasks created in it."""
    token = _fields.set({**(_fields.get() or {}), **values})
    try:
        yield
    finally:
        _fields.reset(token)


def set_task(task: RunningTask | None) -> None:
    """Make ``task`` the one the lines logged in this context are about (a runner, for each run).

    No reset: each runner is an asyncio task with a context of its own, and the next run
    replaces the last.
    """
    _task.set(task)


def context() -> dict[str, Any]:
    """The fields the context adds to a line logged here now."""
    out = dict(_fields.get() or {})
    task = _task.get()
    if task is not None:
        out.update(task_id=task.id, type=task.type, queue=task.queue, attempt=task.attempts)
    return out


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record, where the call did not pass them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created), "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send the process's logs to stderr at ``level``, as ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        handler.addFilter(ContextFilter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
