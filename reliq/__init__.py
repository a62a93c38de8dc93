"""reliq: a fault-tolerant task queue on Redis for asyncio Python.

The public names are imported on first use (PEP 562), so ``import reliq`` costs next to
nothing: the ``reliq`` command can take over SIGTERM and SIGINT before it loads the
roles (a second or more on a busy machine), and a producer that only needs
``reliq.task`` does not load the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "AsyncClient": "reliq.client",
    "Client": "reliq.client",
    "CancelRefused": "reliq.errors",
    "InvalidSchedule": "reliq.errors",
    "InvalidTask": "reliq.errors",
    "PermanentError": "reliq.errors",
    "QueueFull": "reliq.errors",
    "RateLimited": "reliq.errors",
    "RedisFull": "reliq.errors",
    "ReliqError": "reliq.errors",
    "Snooze": "reliq.errors",
    "TaskNotFound": "reliq.errors",
    "TaskFunction": "reliq.producer",
    "configure": "reliq.producer",
    "Context": "reliq.registry",
    "task": "reliq.registry",
    "periodic": "reliq.schedules",
    "Settings": "reliq.settings",
}

if TYPE_CHECKING:
    from reliq.client import AsyncClient, Client
    from reliq.errors import (
        CancelRefused,
        InvalidSchedule,
        InvalidTask,
        PermanentError,
        QueueFull,
        RateLimited,
        RedisFull,
        ReliqError,
        Snooze,
        TaskNotFound,
    )
    from reliq.producer import TaskFunction, configure
    from reliq.registry import Context, task
    from reliq.schedules import periodic
    from reliq.settings import Settings

__all__ = [  # the names of _EXPORTS (a test holds them equal)
    "AsyncClient", "CancelRefused", "Client", "Context", "InvalidSchedule", "InvalidTask", "PermanentError",
    "QueueFull", "RateLimited", "RedisFull", "ReliqError", "Settings", "Snooze", "TaskFunction", "TaskNotFound",
    "configure", "periodic", "task",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reliq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
