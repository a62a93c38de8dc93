"""Fixtures: private redis-servers on free ports (never the machine's own Redis)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from reliq.connection import connect
from reliq.queue import Queue
from reliq.redis_cluster import LocalCluster
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from tests.flaky import Flaky


def _container_redis() -> Iterator[str]:  # pragma: no cover - only without redis-server
    from testcontainers.redis import RedisContainer

    with RedisContainer() as container:
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server shared by the session's tests; each test uses its own queue."""
    if shutil.which("redis-server") is None:
        yield from _container_redis()
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), aof=False).start()
    yield server.url
    server.stop()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of this test alone, AOF on with fsync always: kill it at will."""
    server = RedisServer(tmp_path / "redis", aof=True, fsync="always").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A private three-primary Redis Cluster shared by a module's tests (AOF off: not for kills)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


def _own_cluster(tmp_path: Path, replicas: int) -> Iterator[LocalCluster]:
    nodes = LocalCluster(tmp_path / "cluster", replicas=replicas, aof=True, fsync="always").start()
    yield nodes
    nodes.stop()


@pytest.fixture
def aof_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three primaries of this test alone, AOF on with fsync always: kill and restart them at will."""
    yield from _own_cluster(tmp_path, replicas=0)


@pytest.fixture
def replica_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three primaries with one replica each, AOF on, of this test alone: fail a primary over at will."""
    yield from _own_cluster(tmp_path, replicas=1)


@pytest.fixture
def queue_name() -> str:
    """A fresh queue name per test, so tests never see each other's keys."""
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def settings(redis_url: str, queue_name: str) -> Settings:
    """Settings with short intervals so time-dependent behaviour runs in test time."""
    return Settings(redis_url=redis_url, queue=queue_name, retry_base=0.05, lease=2.0,
                    heartbeat_interval=0.5, reap_interval=0.2, promote_interval=0.02, drain_timeout=5.0)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session's redis-server."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(redis: Redis, settings: Settings) -> Queue:
    """The test's queue."""
    return Queue(redis, settings)


@pytest.fixture
async def flaky(redis_url: str) -> AsyncIterator[Flaky]:
    """A client of the session's redis-server whose calls fail on demand (tests/flaky.py)."""
    client = connect(redis_url)
    yield Flaky(client)
    await client.aclose()
