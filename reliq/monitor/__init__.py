"""The monitor: the dashboard and its /stats and /metrics, and what only it (and the admin
commands) use: the metrics reader, the sampler, dead-letter browsing, the autoscaling
estimate, and the dead-letter export/import format.

``create_app`` is imported on first use (PEP 562), so ``reliq stats`` and ``reliq dlq``,
which read through ``reliq.monitor.metrics`` and ``reliq.monitor.deadletter``, do not load
the HTTP app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reliq import lazy

if TYPE_CHECKING:
    from reliq.monitor.app import create_app

__all__ = ["create_app"]

__getattr__ = lazy.exports(__name__, {"create_app": "reliq.monitor.app"})
