"""Run a coroutine on a fresh event loop: every command's way into asyncio.

Its own module, so the commands that only read (``reliq stats``, ``reliq dlq``,
``reliq bench``) load neither the API nor the worker with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on a fresh event loop (uvloop when installed); return its exit code."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
