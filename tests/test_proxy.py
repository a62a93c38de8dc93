"""The chaos run's TCP proxy: a partition that holds bytes, a reset that drops connections."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reliq.chaos.proxy import Proxy
from reliq.redis_server import RedisServer


async def _client(proxy: Proxy) -> Redis:
    return Redis.from_url(proxy.url, socket_timeout=0.5, socket_connect_timeout=0.5)


async def test_held_link_delivers_nothing_until_restored(redis_url: str) -> None:
    proxy = await Proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])).start()
    client = await _client(proxy)
    try:
        assert await client.ping()
        proxy.hold()
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        proxy.restore()
        assert await client.ping()
    finally:
        await client.aclose()
        await proxy.close()


async def test_dropped_link_resets_connections_and_refuses_new_ones(redis_url: str) -> None:
    proxy = await Proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])).start()
    client = await _client(proxy)
    try:
        assert await client.ping()
        assert proxy.connections == 1
        proxy.drop()
        await asyncio.sleep(0.05)
        assert proxy.connections == 0
        with pytest.raises(RedisConnectionError):
            await client.ping()
        proxy.restore()
        assert await client.ping()  # redis-py reconnects through the restored link
    finally:
        await client.aclose()
        await proxy.close()


async def test_target_down_looks_like_a_reset(tmp_path: object) -> None:
    server = RedisServer(str(tmp_path), aof=False)  # never started: nothing listens on its port
    proxy = await Proxy(server.port).start()
    client = await _client(proxy)
    try:
        with pytest.raises(RedisConnectionError):
            await client.ping()
    finally:
        await client.aclose()
        await proxy.close()
