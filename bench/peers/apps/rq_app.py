"""RQ: a no-op run by SimpleWorker (no fork per job: RQ's fastest mode, one job at a time).

``rq worker --worker-class rq.worker.SimpleWorker --url URL bench``
"""

from harness import QUEUE, URL, hit
from redis import Redis
from rq import Queue


def noop():
    hit()


def enqueue(n: int, concurrency: int) -> None:
    queue = Queue(QUEUE, connection=Redis.from_url(URL))
    for _ in range(n):
        queue.enqueue(noop)
