"""Must type-check under mypy --strict: producers pass what the handlers take."""

from typing import assert_type

from handlers import Invoice, resize, send_invoice

from reliq import Context


def produce() -> None:
    task_id: str = send_invoice.enqueue({"invoice": 42}, delay=5, idempotency_key="invoice-42")
    assert_type(resize.enqueue(640, queue="low", max_retries=0, timeout=2.5), str)
    assert_type(resize(3), dict[str, bool])  # still the function itself
    invoice: Invoice = {"invoice": 7}
    send_invoice.enqueue(invoice, run_at="2030-01-01T09:00:00Z")
    print(task_id)


async def aproduce() -> None:
    assert_type(await send_invoice.aenqueue({"invoice": 1}), str)
    await send_invoice({"invoice": 1}, Context("id", "send-invoice", 1))
