"""A partitioned queue on a local three-primary Redis Cluster, end to end through real processes.

``reliq serve`` and ``reliq work`` run as subprocesses; tasks go in through the HTTP API and
every id it answered 202 for is looked up through it again (the id says its partition).
The crash test SIGKILLs a worker mid-run and one primary's redis-server, restarted on
its AOF (fsync always): every task the API promised must still complete.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from reliq.keys import QueueKeys
from reliq.partitions import PartitionMap, index_of
from reliq.redis_cluster import LocalCluster, cli
from reliq.redis_server import free_port
from tests import procs
from tests.util import eventually

#: Partitions of the queue under test (issue 17 §1): one on each primary.
PARTITIONS = 3
#: Tasks a POST /tasks.
BATCH = 25


def partition_args() -> list[str]:
    """The roles' ``--partitions`` flag."""
    return ["--partitions", str(PARTITIONS)]


def tags(cluster: LocalCluster, queue: str) -> list[str]:
    """The partitions' hash tags, as the partition map in Redis records them (read from partition 0's primary)."""
    key = QueueKeys(queue).partitions
    raw = cli(cluster.owner(key).port, "GET", key).strip()
    return list(PartitionMap.decode(queue, raw).tags)


@dataclass
class Deployment:
    """The API and the workers of one test, and where their logs go."""

    url: str
    queue: str
    logs: Path
    api_port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    def start_worker(self) -> subprocess.Popen[bytes]:
        """One more ``reliq work`` of concurrency 16 (lease 2 s) on the queue."""
        log = self.logs / f"worker{len(self.workers)}.log"
        self.workers.append(procs.worker(self.url, self.queue, log, "--concurrency", "16", *partition_args()))
        return self.workers[-1]

    def logs_text(self) -> str:
        """Every log of the deployment, for a failure's message."""
        return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


@contextmanager
def deployment(url: str, queue: str, logs: Path, workers: int) -> Iterator[Deployment]:
    """An API and ``workers`` workers serving ``queue``, all stopped at the end."""
    d = Deployment(url, queue, logs)
    try:
        d.api = procs.api(url, queue, d.api_port, logs / "api.log", *partition_args())
        for _ in range(workers):
            d.start_worker()
        yield d
    finally:
        for proc in [*d.workers, *([d.api] if d.api else [])]:
            procs.stop(proc)


@dataclass
class Produced:
    """What the API answered: the ids of every 202, and the other answers counted."""

    ids: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)


async def produce(base: str, tasks: int, out: Produced, senders: int = 4) -> None:
    """POST ``tasks`` sleep tasks (5 ms) in batches; a refused batch is counted, not retried (it was not promised)."""
    batches = iter(range(0, tasks, BATCH))
    body = [{"type": "sleep", "payload": 0.005}] * BATCH
    timeout = aiohttp.ClientTimeout(total=10)

    async def sender(http: aiohttp.ClientSession) -> None:
        for _ in batches:
            try:
                async with http.post(base + "/tasks", json=body) as resp:
                    if resp.status == 202:
                        out.ids += (await resp.json())["task_ids"]
                        continue
                    out.refused[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.refused[type(exc).__name__] += 1
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(sender(http) for _ in range(senders)))


async def states(base: str, ids: list[str]) -> dict[str, str]:
    """Each task's state, by ``GET /task/{id}`` (the state 'unreadable' when that failed)."""
    out: dict[str, str] = {}
    gate = asyncio.Semaphore(32)

    async def one(http: aiohttp.ClientSession, task_id: str) -> None:
        async with gate:
            try:
                async with http.get(f"{base}/task/{task_id}") as resp:
                    out[task_id] = (await resp.json())["state"] if resp.status == 200 else f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError):
                out[task_id] = "unreadable"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(one(http, i) for i in ids))
    return out


def all_succeeded(d: Deployment, ids: list[str]) -> Callable[[], Awaitable[bool]]:
    """A condition for :func:`eventually`: every id in state succeeded."""
    async def check() -> bool:
        return set((await states(d.base, ids)).values()) == {"succeeded"}
    return check


@pytest.mark.serial  # an API, workers and a cluster under 3000 tasks, on 10 s client timeouts
async def test_3000_tasks_through_the_api_on_a_partitioned_queue_all_succeed(
    cluster: LocalCluster, queue_name: str, tmp_path: Path
) -> None:
    with deployment(cluster.url, queue_name, tmp_path, workers=2) as d:
        out = Produced()
        await produce(d.base, 3000, out)
        assert (len(out.ids), out.refused) == (3000, Counter())
        assert len(set(out.ids)) == 3000
        await eventually(all_succeeded(d, out.ids), timeout=30, interval=0.5, what="3,000 tasks succeeded")
    # each partition on a primary of its own, and each task's record on the primary its id names
    parts = tags(cluster, queue_name)
    owners = [cluster.owner(QueueKeys(tag).pending) for tag in parts]
    assert len(parts) == PARTITIONS and len({o.port for o in owners}) == PARTITIONS
    spread = Counter(index_of(i, PARTITIONS) for i in out.ids)
    assert sorted(spread) == list(range(PARTITIONS)) and min(spread.values()) >= 500, spread
    for task_id in out.ids[::100]:
        node = owners[index_of(task_id, PARTITIONS)]  # asked directly, not through the cluster client
        assert cli(node.port, "HGET", QueueKeys(parts[index_of(task_id, PARTITIONS)]).task(task_id), "state").strip() \
            == "succeeded"


@pytest.mark.timeout(120)
async def test_a_worker_and_a_primary_killed_mid_run_lose_no_accepted_task(
    aof_cluster: LocalCluster, queue_name: str, tmp_path: Path
) -> None:
    """SIGKILL a worker while it runs tasks, and one primary's redis-server, restarted on its AOF a
    second later, while the API takes tasks: every task it answered 202 for succeeds."""
    cluster = aof_cluster
    with deployment(cluster.url, queue_name, tmp_path, workers=2) as d:
        victim = cluster.owner(QueueKeys(tags(cluster, queue_name)[1]).pending)  # partition 1's primary
        out = Produced()
        producing = asyncio.create_task(produce(d.base, 1500, out))
        await eventually(lambda: len(out.ids) >= 300, timeout=20, what="300 tasks accepted")
        d.workers[0].kill()
        d.start_worker()
        await eventually(lambda: len(out.ids) >= 700, timeout=20, what="700 tasks accepted")
        victim.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.restart, victim)
        await producing
        assert len(out.ids) >= 1000, out.refused
        try:
            await eventually(all_succeeded(d, out.ids), timeout=40, interval=0.5, what="every 202 succeeded")
        except AssertionError:
            left = Counter((await states(d.base, out.ids)).values())
            raise AssertionError(f"{left}\n{d.logs_text()}") from None
        assert all(w.poll() is None for w in d.workers[1:]), d.logs_text()
        assert "Traceback" not in d.logs_text()
