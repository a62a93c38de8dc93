"""Every exception reliq raises, in one flat module."""

from __future__ import annotations


class ReliqError(Exception):
    """Base class of reliq's own errors."""


class ConfigError(ReliqError):
    """A setting is missing or wrong; the message says which and how to fix it."""


class InvalidTask(ReliqError):
    """A task submitted for enqueueing is malformed (the API turns this into a 400)."""


class TaskNotFound(ReliqError):
    """No record exists for the task id (never created, or expired)."""


class CancelRefused(ReliqError):
    """The task has already started or finished, so it cannot be cancelled."""

    def __init__(self, state: str) -> None:
        super().__init__(f"task is {state}; only pending or scheduled tasks can be cancelled")
        self.state = state


class PermanentError(ReliqError):
    """Raise from a handler to dead-letter the task at once, without retries."""


class TaskTimeout(ReliqError):
    """A handler ran past its timeout."""
