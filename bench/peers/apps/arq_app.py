"""arq: an async no-op, a worker with max_jobs 64 (``arq arq_app.WorkerSettings``)."""

from arq import create_pool
from arq.connections import RedisSettings
from harness import URL, hit, spread


async def noop(ctx):
    hit()


class WorkerSettings:
    functions = (noop,)
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 64


async def enqueue(n: int, concurrency: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(URL))
    await spread(n, concurrency, lambda: pool.enqueue_job("noop"))
    await pool.aclose()
