"""The task the Flask example enqueues: ``reliq work --app tasks`` runs it."""

from __future__ import annotations

import reliq


@reliq.task("send-welcome")
def send_welcome(payload: dict[str, str]) -> str:
    """Pretend to email a new user; the return value is stored as the task's result."""
    return f"welcome mail sent to {payload['email']}"
