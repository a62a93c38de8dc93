"""An application's task module, as a web app imports it: handlers only, no worker.

Used by tests/test_task_producers.py: imported by a plain process that enqueues through
the handlers, and served by ``reliq work --app tests.apps.greetings``.
"""

from __future__ import annotations

import reliq


@reliq.task("greet")
def greet(payload: dict[str, str]) -> str:
    """A plain handler with a result."""
    return f"hello {payload['name']}"


@reliq.task("greet-async")
async def greet_async(payload: dict[str, str], ctx: reliq.Context) -> str:
    """An async handler that takes the context."""
    return f"hello {payload['name']} from {ctx.type}"
