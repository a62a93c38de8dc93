"""Handlers that log, loaded by ``reliq work --app tests.apps.chatty`` (tests/test_logs.py)."""

from __future__ import annotations

import logging
from typing import Any

import reliq

log = logging.getLogger("chatty")


@reliq.task("chatty-async")
async def chatty_async(payload: Any) -> None:
    """Log one line from an async handler: the worker adds the task's fields."""
    log.warning("async handler says %s", payload)


@reliq.task("chatty-sync")
def chatty_sync(payload: Any) -> None:
    """Log one line from a plain handler, in the worker's thread pool."""
    log.warning("sync handler says %s", payload)
