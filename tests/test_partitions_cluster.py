"""Partitioned queues on a real three-primary Redis Cluster: three partitions on three
primaries, and the whole flow (producers, ids, a worker, stats) across them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from reliq import partitions
from reliq.client import AsyncClient, Client
from reliq.connection import connect
from reliq.keys import QueueKeys
from reliq.partitions import index_of
from reliq.queue import Queue
from reliq.redis_cluster import LocalCluster
from reliq.registry import REGISTRY
from reliq.settings import Settings
from reliq.worker import Worker

#: One process of a parallel run (pytest -n) runs the module's tests: one shared cluster (conftest).
pytestmark = pytest.mark.xdist_group("partitions-cluster")


@pytest.fixture
def cluster_url(cluster: LocalCluster) -> str:
    return cluster.url


@pytest.fixture
async def rc(cluster_url: str) -> AsyncIterator[Redis]:
    client = connect(cluster_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("name", ["orders", "a", "q-7"])
async def test_three_partitions_land_on_three_primaries_and_every_key_of_one_on_one_slot(
    rc: Redis, cluster: LocalCluster, cluster_url: str, name: str
) -> None:
    name = f"{name}-{id(rc) % 10_000}"
    queue = Queue(rc, Settings(redis_url=cluster_url, queue=name))
    pmap = await partitions.resolve(queue, 3)
    assert pmap.tags[0] == name and pmap.n == 3
    owners = set()
    for tag in pmap.tags:
        k = QueueKeys(tag)
        keys = [k.pending, k.delayed, k.dead, k.workers, k.stats, k.task("x.1"), k.idem("y"), k.processing("w")]
        assert len({key_slot(key.encode()) for key in keys}) == 1
        owners.add(cluster.owner(k.pending).port)
    assert len(owners) == 3 and owners == {n.port for n in cluster.primaries()}, pmap.tags
    placed = await partitions.placement(rc, pmap)
    assert [int(node.rpartition(":")[2]) for node in placed] == [cluster.owner(QueueKeys(t).pending).port
                                                                  for t in pmap.tags]
    assert pmap.tags == (await partitions.resolve(Queue(rc, queue.settings), 3)).tags  # recorded once


async def test_a_partitioned_queue_on_the_cluster_from_producers_to_a_worker(rc: Redis, cluster_url: str) -> None:
    settings = Settings(redis_url=cluster_url, queue="flow-p", lease=2.0, heartbeat_interval=0.5,
                        reap_interval=0.2, promote_interval=0.02)
    queue = Queue(rc, settings)
    await partitions.resolve(queue, 3)
    async with AsyncClient(cluster_url, "flow-p") as producer:
        ids = [await producer.enqueue("noop", i) for i in range(30)]
        ids += await producer.enqueue_many([("noop", i) for i in range(10)])
        ids += [await producer.enqueue("noop", i, key="acct-1") for i in range(5)]
    with Client(cluster_url, "flow-p") as blocking:  # the sync cluster client, ids routed alike
        ids += [blocking.enqueue("noop", "sync") for _ in range(3)]
        assert {blocking.get(i)["state"] for i in ids} == {"pending"}
    assert {index_of(i, 3) for i in ids} == {0, 1, 2}
    snap = await queue.snapshot()
    assert snap["pending"] == len(ids) and sorted(p["node"] for p in snap["partitions"]) == sorted(
        set(p["node"] for p in snap["partitions"]))
    worker = Worker(Queue(rc, settings), settings, REGISTRY, burst=True)  # given the queue, serves its partitions
    assert await asyncio.wait_for(worker.run(), 30)
    assert set(await queue.states(ids)) == {"succeeded"}
    assert (await queue.snapshot())["succeeded"] == len(ids)
