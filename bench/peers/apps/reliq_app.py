"""reliq: an async no-op (``reliq work --app reliq_app --concurrency 64``)."""

from harness import QUEUE, URL, hit, spread

import reliq


@reliq.task("bench-noop")
async def noop(payload):
    hit()


async def enqueue(n: int, concurrency: int) -> None:
    async with reliq.AsyncClient(URL, QUEUE) as client:
        await spread(n, concurrency, lambda: client.enqueue("bench-noop"))


def sender(lib: str):
    """What one blocking enqueue is (bench/peers/apps/sequential.py): the Client, or the handler."""
    if lib == "reliq-task":
        reliq.configure(redis_url=URL, queue=QUEUE)
        return lambda: noop.enqueue(None)
    client = reliq.Client(URL, QUEUE)
    return lambda: client.enqueue("bench-noop")
