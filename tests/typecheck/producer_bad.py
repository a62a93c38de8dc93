"""Must fail mypy --strict on exactly the lines marked ``# E``."""

from handlers import resize, send_invoice


def produce() -> None:
    send_invoice.enqueue({"invoice": "42"})  # E: a str where the payload has an int
    send_invoice.enqueue({"number": 42})  # E: a key the payload does not have
    resize.enqueue("640")  # E: resize takes an int
    resize.enqueue(640, delay="soon")  # E: delay is seconds
    resize.enqueue(640, urgency=1)  # E: no such option
    resize("x")  # E: the function itself is checked as before
    count: int = resize.enqueue(1)  # E: enqueue returns the task id, a str
    print(count)


async def aproduce() -> None:
    await send_invoice.aenqueue(5)  # E: not an Invoice
    await send_invoice({"invoice": 1})  # E: the handler also takes the context
