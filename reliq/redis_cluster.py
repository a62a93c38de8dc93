"""A private Redis Cluster on 127.0.0.1: primaries (and replicas) we start, join, kill and restart.

For tests, ``reliq chaos --redis-cluster N`` and the shard benchmark. Each node is a
:class:`~reliq.redis_server.RedisServer` with ``cluster-enabled``; ``redis-cli --cluster
create`` joins them. The roles reach it through :attr:`LocalCluster.url`
(``redis+cluster://`` with every node as a seed, so any one of them may be down).

Two settings differ from Redis's defaults, for reasons that matter to partitioned queues:

- ``cluster-require-full-coverage no``: while one primary is down, the slots of the
  others keep serving, so the partitions on the other shards keep running (with the
  default, the whole cluster answers CLUSTERDOWN until the dead node is back).
- ``cluster-node-timeout`` 2 s (default 15 s): a replica takes over a dead primary in
  about 3 to 5 s, which fits in a test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.crc import key_slot

from reliq.errors import ConfigError
from reliq.redis_server import RedisServer, free_port

#: Milliseconds before a node that does not answer is taken for failed (Redis: 15,000).
NODE_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class NodeInfo:
    """One line of ``CLUSTER NODES``: a node's port, role, health and slot ranges."""

    id: str
    port: int
    primary: bool
    failed: bool
    primary_id: str  # "-" for a primary
    slots: tuple[tuple[int, int], ...]

    def owns(self, slot: int) -> bool:
        """Whether ``slot`` is in one of this node's ranges."""
        return any(first <= slot <= last for first, last in self.slots)


def parse_nodes(text: str) -> list[NodeInfo]:
    """``CLUSTER NODES`` output as :class:`NodeInfo`, one per node (slots being migrated skipped)."""
    nodes = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        flags = f[2].split(",")
        ranges = []
        for spec in f[8:]:
            if spec.startswith("["):
                continue  # "[slot->-node]": a migration in progress
            first, _, last = spec.partition("-")
            ranges.append((int(first), int(last or first)))
        port = int(f[1].split("@", 1)[0].rsplit(":", 1)[1])
        nodes.append(NodeInfo(f[0], port, "master" in flags, "fail" in flags or "fail?" in flags, f[3],
                              tuple(ranges)))
    return nodes


def cli(port: int, *command: str, timeout: float = 10.0) -> str:
    """``redis-cli -p port command...``'s output ('' when the node does not answer in time)."""
    try:
        return subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True,
                              timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return ""


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, all ours, under ``base``.

    ``wrap(i)``: the command node ``i`` runs under (callgrind, for the benchmark);
    ``aof``/``fsync`` as for :class:`RedisServer` (a node killed and restarted on its
    AOF with ``fsync="always"`` forgets nothing it acknowledged).
    """

    def __init__(self, base: Path, primaries: int = 3, replicas: int = 0, *, aof: bool = False,
                 fsync: str = "everysec", node_timeout_ms: int = NODE_TIMEOUT_MS,
                 wrap: Callable[[int], tuple[str, ...]] | None = None) -> None:
        if shutil.which("redis-cli") is None:
            raise ConfigError("a local Redis Cluster needs redis-cli (it comes with redis-server)")
        if primaries < 3:
            raise ConfigError("Redis Cluster needs at least 3 primaries")
        self.base = base.absolute()
        self.replicas_each = replicas
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            node_dir = self.base / f"node{i}"
            # the bus port is set explicitly: the default (port + 10000) may be taken, or past 65535
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                     "--cluster-port", str(free_port()), "--cluster-node-timeout", str(node_timeout_ms),
                     "--cluster-require-full-coverage", "no")
            self.nodes.append(RedisServer(node_dir, aof=aof, fsync=fsync, extra=extra,
                                          wrap=wrap(i) if wrap else ()))
        self.primary_count = primaries

    @property
    def url(self) -> str:
        """The reliq URL of the cluster: every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0, node_timeout: float = 10.0) -> LocalCluster:
        """Start every node, join them, wait until every node knows the whole slot map."""
        try:
            for node in self.nodes:
                node.start(node_timeout)
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", str(self.replicas_each), "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
            self.wait_ok(timeout)
            if self.replicas_each:
                self.wait_synced(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def live(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def node_table(self) -> list[NodeInfo]:
        """The cluster's view of itself, from the first live node that answers."""
        for node in self.live():
            if text := cli(node.port, "CLUSTER", "NODES", timeout=3):
                return parse_nodes(text)
        return []

    def by_port(self, port: int) -> RedisServer:
        """Our node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def primaries(self) -> list[RedisServer]:
        """The nodes that serve slots now (a promoted replica included, a failed primary not)."""
        return [self.by_port(i.port) for i in self.node_table() if i.primary and i.slots and not i.failed]

    def replicas(self) -> list[RedisServer]:
        """The nodes that replicate a primary now."""
        return [self.by_port(i.port) for i in self.node_table() if not i.primary]

    def owner(self, key: str | bytes) -> RedisServer:
        """The primary that holds ``key`` (by its hash tag)."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return next(self.by_port(i.port) for i in self.node_table() if i.primary and not i.failed and i.owns(slot))

    def wait_ok(self, timeout: float = 30.0, nodes: Sequence[RedisServer] | None = None) -> None:
        """Wait until each of ``nodes`` (default: every live one) reports ``cluster_state:ok``
        and sees every slot served by a primary it does not take for failed."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.live():
            while not self._ok(node.port):
                if time.monotonic() > deadline:
                    raise ConfigError(f"cluster node on port {node.port} not ok within {timeout:g}s")
                time.sleep(0.05)

    def _ok(self, port: int) -> bool:
        if "cluster_state:ok" not in cli(port, "CLUSTER", "INFO", timeout=3):
            return False
        table = parse_nodes(cli(port, "CLUSTER", "NODES", timeout=3))
        served = sum(last - first + 1 for i in table if i.primary and not i.failed for first, last in i.slots)
        return served == 16384

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        for node in self.replicas():
            while "master_link_status:up" not in cli(node.port, "INFO", "replication", timeout=3):
                if time.monotonic() > deadline:
                    raise ConfigError(f"replica on port {node.port} not in sync within {timeout:g}s")
                time.sleep(0.05)

    def wait_replicated(self, primary: RedisServer, timeout: float = 10.0) -> None:
        """Wait until every replica of ``primary`` has what it had written when this was called."""
        info = cli(primary.port, "INFO", "replication")
        target = int(info.split("master_repl_offset:", 1)[1].split()[0])
        deadline = time.monotonic() + timeout
        while True:
            lines = [ln for ln in info.splitlines() if ln.startswith("slave") and "offset=" in ln]
            offsets = [int(ln.split("offset=", 1)[1].split(",")[0]) for ln in lines]
            if offsets and min(offsets) >= target:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"replicas of port {primary.port} not at offset {target} within {timeout:g}s")
            time.sleep(0.05)
            info = cli(primary.port, "INFO", "replication")

    def restart(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed node again (on its AOF and nodes.conf) and wait until the cluster is whole."""
        node.start(timeout)
        self.wait_ok(timeout)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
