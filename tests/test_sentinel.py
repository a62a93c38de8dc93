"""reliq through Redis Sentinel: the primary is SIGKILLed while tasks flow, nothing replicated is lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from reliq.client import Client
from reliq.connection import UNAVAILABLE, connect, parse_multi_host
from reliq.errors import ConfigError
from reliq.keys import QueueKeys
from reliq.queue import Queue
from reliq.redis_server import RedisServer
from reliq.settings import Settings
from tests import procs
from tests.util import eventually, wait_until

SERVICE = "reliqmaster"


class SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel``, monitoring one primary with a quorum of 2."""

    def __init__(self, data_dir: Path, primary_port: int) -> None:
        super().__init__(data_dir, aof=False)
        self.primary_port = primary_port

    def command(self) -> list[str]:
        """Sentinels rewrite their config file, so each gets its own."""
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\nlogfile {self.data_dir}/sentinel.log\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
        )
        return [self.binary, str(conf), "--sentinel"]


def _cli(port: int, *command: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, timeout=10,
                          text=True).stdout


@dataclass
class Topology:
    """A primary, its replica and three Sentinels, all ours."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]

    @property
    def url(self) -> str:
        """The reliq URL that follows the primary."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}"

    def primary_port(self) -> int:
        """The primary's port as the first Sentinel names it now."""
        answer = _cli(self.sentinels[0].port, "SENTINEL", "get-master-addr-by-name", SERVICE).split()
        return int(answer[1]) if len(answer) == 2 else 0

    def servers(self) -> list[RedisServer]:
        """Every process of the topology."""
        return [self.primary, self.replica, *self.sentinels]


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """Start the primary and the replica, wait for the sync, then the Sentinels, until they know each other."""
    primary = RedisServer(tmp_path / "primary", aof=False)
    replica = RedisServer(tmp_path / "replica", aof=False,
                          extra=("--replicaof", "127.0.0.1", str(primary.port)))
    top = Topology(primary, replica, [SentinelServer(tmp_path / f"sentinel{i}", primary.port) for i in range(3)])
    try:
        primary.start()
        replica.start()
        wait_until(lambda: "master_link_status:up" in _cli(replica.port, "INFO", "replication"),
                   what="replica in sync")
        for s in top.sentinels:
            s.start()
        for s in top.sentinels:  # each knows the replica and its two peers, so a failover can be voted
            wait_until(lambda s=s: _cli(s.port, "SENTINEL", "replicas", SERVICE).count("name") == 1
                       and _cli(s.port, "SENTINEL", "sentinels", SERVICE).count("name") == 2,
                       timeout=15, what=f"sentinel {s.port} sees the replica and its peers")
        yield top
    finally:
        for server in top.servers():
            server.stop()


@pytest.fixture
async def client(topology: Topology) -> AsyncIterator[Redis]:
    """A producer's client through the Sentinels."""
    redis = connect(topology.url, max_connections=8, socket_timeout=2.0)
    yield redis
    await redis.aclose()


@dataclass
class Produced:
    """What the producer knows: ids confirmed on a replica, ids sent to the new primary."""

    replicated: list[str]
    after_failover: list[str]
    failed: int = 0


async def produce(queue: Queue, stop: asyncio.Event, failed_over: asyncio.Event, out: Produced) -> None:
    """Enqueue tasks until ``stop``; WAIT for one replica after each before counting it as safe."""
    while not stop.is_set():
        started_after_failover = failed_over.is_set()
        try:
            task_id = await queue.enqueue("sleep", 0.05)
            replicas = await queue.redis.execute_command("WAIT", 1, 200)
        except UNAVAILABLE:
            out.failed += 1
            await asyncio.sleep(0.05)
            continue
        if replicas >= 1:
            out.replicated.append(task_id)
        elif started_after_failover:  # the old primary is dead: only the new one can have answered
            out.after_failover.append(task_id)
        await asyncio.sleep(0.01)


async def test_killed_primary_fails_over_and_every_replicated_task_completes(
    topology: Topology, client: Redis, tmp_path: Path
) -> None:
    name = "s-" + uuid.uuid4().hex[:10]
    queue = Queue(client, Settings(redis_url=topology.url, queue=name))
    worker = procs.worker(topology.url, name, tmp_path / "worker.log", "--concurrency", "16", "--lease", "5")
    stop, failed_over = asyncio.Event(), asyncio.Event()
    out = Produced([], [])
    producer = asyncio.create_task(produce(queue, stop, failed_over, out))
    try:
        await eventually(lambda: len(out.replicated) >= 60, timeout=15, what="tasks flowing")
        await eventually(_running(queue), timeout=10, what="worker running tasks")
        old = topology.primary.port
        topology.primary.kill()
        started = time.monotonic()
        await eventually(lambda: topology.primary_port() not in (0, old), timeout=20, interval=0.1,
                         what="Sentinels promote the replica")
        failover_s = time.monotonic() - started
        failed_over.set()
        await eventually(lambda: len(out.after_failover) >= 20, timeout=15, what="producing to the new primary")
        stop.set()
        await producer

        async def all_succeeded() -> bool:
            ids = out.replicated + out.after_failover
            states = [(await queue.get(i))["state"] for i in ids]
            return states == ["succeeded"] * len(ids)

        await eventually(all_succeeded, timeout=20, interval=0.2, what="every replicated task succeeded")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, (tmp_path / "worker.log").read_text()
        print(f"failover took {failover_s:.1f}s; {len(out.replicated)} replicated + "
              f"{len(out.after_failover)} later tasks all succeeded; {out.failed} enqueue attempts failed")
    finally:
        stop.set()
        await asyncio.gather(producer, return_exceptions=True)
        procs.stop(worker)


def _running(queue: Queue) -> object:
    async def check() -> bool:
        return (await queue.snapshot())["processing"] > 0
    return check


async def test_ack_lost_in_a_failover_is_found_by_its_live_worker_and_run_again(
    queue: Queue, settings: Settings
) -> None:
    """A failover can lose the last writes: a task stays in the list of a worker that is
    alive, heartbeating, and no longer knows it holds it. The worker finds it within a lease."""
    from reliq.registry import REGISTRY
    from reliq.worker import Worker

    worker_id = "w-lost-ack"
    task_id = await queue.enqueue("noop")
    claimed, _ = await queue.claim(worker_id, 1)  # replicated claim whose ack was then lost
    assert [t.id for t in claimed] == [task_id]
    worker = Worker(queue, settings, REGISTRY, worker_id=worker_id)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await eventually(_state_is(queue, task_id, "succeeded"), timeout=settings.lease * 3,
                         what="the orphaned task run again")
    finally:
        stop.set()
        assert await running


def _state_is(queue: Queue, task_id: str, state: str) -> object:
    async def check() -> bool:
        return (await queue.get(task_id))["state"] == state
    return check


def test_sync_client_writes_to_the_primary_the_sentinels_name(topology: Topology) -> None:
    with Client(topology.url, "q-sync") as client:
        task_id = client.enqueue("noop", "through the sentinels")
        assert client.get(task_id)["payload"] == "through the sentinels"
        assert client.cancel(task_id) == "pending"
    # on the primary itself, not a replica or a stale address
    assert _cli(topology.primary.port, "HGET", QueueKeys("q-sync").task(task_id), "state").strip() == "cancelled"


def test_sentinel_urls_name_the_sentinels_the_service_and_the_database() -> None:
    u = parse_multi_host("redis+sentinel://:dpass@s1,s2:26380/mymaster/2?sentinel_password=spass", 26379)
    assert u.hosts == (("s1", 26379), ("s2", 26380))
    assert (u.service, u.db, u.password, u.sentinel_password) == ("mymaster", 2, "dpass", "spass")
    with pytest.raises(ConfigError, match="service name"):
        connect("redis+sentinel://s1:26379")
    with pytest.raises(ConfigError, match="not a number"):
        connect("redis+sentinel://s1:26379/mymaster/x")


def test_failover_errors_count_as_redis_unavailable() -> None:
    from redis.exceptions import BusyLoadingError, ReadOnlyError
    from redis.sentinel import MasterNotFoundError

    for exc in (MasterNotFoundError("no master"), ReadOnlyError("READONLY"), BusyLoadingError("LOADING")):
        assert isinstance(exc, UNAVAILABLE)
