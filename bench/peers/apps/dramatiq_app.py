"""Dramatiq: a no-op actor, one worker process with 64 threads.

``dramatiq dramatiq_app --processes 1 --threads 64 --queues bench``
"""

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from harness import QUEUE, URL, hit

dramatiq.set_broker(RedisBroker(url=URL))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop():
    hit()


def enqueue(n: int, concurrency: int) -> None:
    for _ in range(n):
        noop.send()


def sender(lib: str):
    """What one blocking enqueue is (bench/peers/apps/sequential.py)."""
    return noop.send
