"""The monitor: the dashboard and its /stats and /metrics, and what only it (and the admin
commands) use: the metrics reader, the sampler, dead-letter browsing, the autoscaling
estimate, and the dead-letter export/import format.

``create_app`` is imported on first use (PEP 562), so ``reliq stats`` and ``reliq dlq``,
which read through ``reliq.monitor.metrics`` and ``reliq.monitor.deadletter``, do not load
the HTTP app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reliq.monitor.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name != "create_app":
        raise AttributeError(f"module 'reliq.monitor' has no attribute {name!r}")
    value = importlib.import_module("reliq.monitor.app").create_app
    globals()[name] = value
    return value
