"""Celery: a no-op on the threads pool at concurrency 64, results off.

``celery -A celery_app worker --pool threads --concurrency 64``
"""

from celery import Celery
from harness import QUEUE, URL, hit

app = Celery("bench", broker=URL)
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop():
    hit()


def enqueue(n: int, concurrency: int) -> None:
    for _ in range(n):
        noop.delay()
