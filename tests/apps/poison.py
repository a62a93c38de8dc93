"""Task types for crash tests, loaded by `reliq work --app tests.apps.poison`."""

from __future__ import annotations

import os
import signal
from typing import Any

from reliq import task


@task("poison")
async def poison(payload: Any) -> None:
    """Kill the worker process running it, every time (a poison pill)."""
    os.kill(os.getpid(), signal.SIGKILL)
