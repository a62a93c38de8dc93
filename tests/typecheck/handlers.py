"""Handlers whose producers tests/test_task_producers.py type-checks (never imported by tests)."""

from typing import TypedDict

import reliq
from reliq import Context


class Invoice(TypedDict):
    """The payload of send-invoice."""

    invoice: int


@reliq.task("send-invoice")
async def send_invoice(payload: Invoice, ctx: Context) -> None:
    """Takes the context too."""


@reliq.task("resize", timeout=30)
def resize(payload: int) -> dict[str, bool]:
    """A plain function with a result."""
    return {"ok": payload > 0}
