"""Reference: a bare aiohttp handler that does one LPUSH per request (what POST /task is
measured against). ``python bench/ref_lpush.py --port P --redis-url URL``

It parses the JSON body, checks ``type``, makes an id, LPUSHes the body and answers 202:
the least a queue API can do. It keeps no task record, so it is a floor to beat, not a
design to copy.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from redis.asyncio import Redis

Push = Callable[[bytes], Awaitable[object]]


def make_app(push: Push | None) -> web.Application:
    """The app; ``push`` sends the body to Redis (None: no Redis call at all)."""

    async def post_task(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            task = orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        if not isinstance(task, dict) or not isinstance(task.get("type"), str):
            return web.json_response({"error": "'type' must be a string"}, status=400)
        task_id = secrets.token_hex(8)
        if push is not None:
            await push(orjson.dumps({"id": task_id, **task}))
        return web.Response(status=202, content_type="application/json",
                            body=orjson.dumps({"status": "queued", "task_id": task_id}))

    app = web.Application()
    app.router.add_post("/task", post_task)
    return app


def main(use_redis: bool = True) -> None:
    """Serve the reference on 127.0.0.1 (uvloop when installed, as reliq serve does)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    push: Push | None = None
    if use_redis:
        redis = Redis.from_url(args.redis_url)

        async def push(body: bytes) -> object:
            return await redis.lpush("ref:pending", body)

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(push), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
