"""reliq: an async no-op (``reliq work --app reliq_app --concurrency 64``)."""

from harness import QUEUE, URL, hit, spread

import reliq


@reliq.task("bench-noop")
async def noop(payload):
    hit()


async def enqueue(n: int, concurrency: int) -> None:
    async with reliq.AsyncClient(URL, QUEUE) as client:
        await spread(n, concurrency, lambda: client.enqueue("bench-noop"))
