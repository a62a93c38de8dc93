"""The worker process: the runner coroutines and the loops that keep a worker's tasks safe.

``worker.py`` is the :class:`Worker` itself; the others are used by it alone: the fetcher,
the heartbeat, the reaper, the promoter, the watchdog, the trimmers, the process pool, and
the process supervisor (``reliq work --processes N``) with its health endpoint.

``Worker`` is imported on first use (PEP 562), so importing one of these modules (the
process pool's forkserver preloads ``reliq.worker.procpool``) does not load the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reliq import lazy

if TYPE_CHECKING:
    from reliq.worker.worker import Worker

__all__ = ["Worker"]

__getattr__ = lazy.exports(__name__, {"Worker": "reliq.worker.worker"})
