"""saq: an async no-op, a worker at concurrency 64 (``saq saq_app.settings``)."""

from harness import QUEUE, URL, hit, spread
from saq import Queue

queue = Queue.from_url(URL, name=QUEUE)


async def noop(ctx):
    hit()


settings = {"queue": queue, "functions": [noop], "concurrency": 64}


async def enqueue(n: int, concurrency: int) -> None:
    await queue.connect()
    await spread(n, concurrency, lambda: queue.enqueue("noop"))
    await queue.disconnect()
