"""Handlers with retry policies, for tests/test_retry_policies.py.

In a module of their own so that ``isolation="process"`` children can import them.
"""

from __future__ import annotations

import os

import reliq

#: What a payload makes the handlers raise.
ERRORS: dict[str, type[Exception]] = {"value": ValueError, "key": KeyError, "connection": ConnectionError}


def _raise(kind: str) -> None:
    raise ERRORS[kind](kind)


@reliq.task("policy-picky", retry_on=(ConnectionError, TimeoutError), give_up_on=ValueError, retry_base=0.01,
            max_retries=1)
def picky(payload: str) -> None:
    """Only connection errors and timeouts are retried; a ValueError never is."""
    _raise(payload)


@reliq.task("policy-picky-child", isolation="process", retry_on=ConnectionError, retry_base=0.01, max_retries=1)
def picky_child(payload: str) -> None:
    """:func:`picky` in a child process: the child applies the policy, where the exception's class is known."""
    _raise(payload)


@reliq.task("policy-snooze-child", isolation="process")
def snooze_child(marker: str, ctx: reliq.Context) -> int:
    """Snoozes once (until ``marker`` exists), then returns the attempt it runs as."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise reliq.Snooze(0.05)
    return ctx.attempt
