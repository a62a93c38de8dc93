"""The processes of a chaos run: a private Redis, one API, one monitor and N workers.

Everything runs on 127.0.0.1 as child processes of ``reliq chaos``, each with its log
in the run's directory. The cluster keeps track of which processes it meant to stop,
so that a worker that died on its own (the poison pill) is noticed and replaced.

The Redis is one redis-server, or with ``redis_cluster`` a Redis Cluster of that many
primaries (reliq/redis_cluster.py), each with AOF and ``appendfsync always``; then the
Redis faults hit one primary at a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from reliq.chaos.tasks import LOG_ENV
from reliq.redis_cluster import LocalCluster
from reliq.redis_server import RedisServer, answers, free_port

#: A chaos cluster's node timeout: longer than its Redis stalls (lease + 1 s), as a
#: production cluster's (15 s by default) is, so a stall is not taken for a node failure.
CHAOS_NODE_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ClusterOptions:
    """How the cluster is shaped; short leases make recovery fit in a short run."""

    workers: int = 4
    concurrency: int = 16
    lease: float = 3.0
    heartbeat_interval: float = 0.5
    reap_interval: float = 0.5
    crash_limit: int = 3
    drain_timeout: float = 5.0
    retry_base: float = 0.05
    retry_cap: float = 0.5
    max_retries: int = 3
    #: Primaries of a Redis Cluster to run on (0: one plain redis-server).
    redis_cluster: int = 0
    #: Partitions of the queue (issue 17 §1), passed to every role.
    partitions: int = 1


@dataclass
class Proc:
    """One child process (``role`` api or worker) and what we last did to it."""

    role: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    state: str = "running"  # running | stopped (SIGSTOP) | terminating | killed | exited
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        """The process id (the worker id contains it too)."""
        return self.popen.pid

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process still exists."""
        if self.popen.poll() is None:
            os.kill(self.pid, sig)


class Cluster:
    """Starts, signals and stops the processes of one run, all under ``workdir``."""

    def __init__(self, workdir: Path, queue: str, options: ClusterOptions) -> None:
        self.workdir = workdir
        self.queue = queue
        self.options = options
        self.exec_log = workdir / "executions.log"
        self.redis: RedisServer | LocalCluster = (
            LocalCluster(workdir / "redis", options.redis_cluster, aof=True, fsync="always",
                         node_timeout_ms=CHAOS_NODE_TIMEOUT_MS)
            if options.redis_cluster else RedisServer(workdir / "redis", fsync="always"))
        self.api_port = free_port()
        self.api: Proc | None = None
        self.monitor_port = free_port()
        self.monitor: Proc | None = None
        self.workers: list[Proc] = []  # every worker ever started, in order
        self._logs = workdir / "logs"
        self._count = 0

    @property
    def api_url(self) -> str:
        """Base URL of the producer API."""
        return f"http://127.0.0.1:{self.api_port}"

    def _env(self) -> dict[str, str]:
        # Nothing from the caller's RELIQ_* environment leaks in: the run is self-contained.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELIQ_") and k != "REDIS_URL"}
        o = self.options
        env.update({LOG_ENV: str(self.exec_log), "RELIQ_REAP_INTERVAL": str(o.reap_interval),
                    "RELIQ_PROMOTE_INTERVAL": "0.05", "RELIQ_RETRY_CAP": str(o.retry_cap)})
        return env

    def redis_servers(self) -> list[RedisServer]:
        """The Redis processes a Redis fault may hit: the server, or the cluster's primaries now."""
        return self.redis.primaries() if isinstance(self.redis, LocalCluster) else [self.redis]

    def restart_redis(self, server: RedisServer) -> None:
        """Start a killed Redis again on its AOF (on a cluster: and wait until it serves its slots)."""
        if isinstance(self.redis, LocalCluster):
            self.redis.restart(server)
        else:
            server.start()

    def _spawn(self, role: str, args: list[str], redis_url: str | None = None) -> Proc:
        self._count += 1
        self._logs.mkdir(parents=True, exist_ok=True)
        log = (self._logs / f"{self._count:03d}-{role}.log").open("wb")
        partitions = ["--partitions", str(self.options.partitions)] if self.options.partitions > 1 else []
        cmd = [sys.executable, "-m", "reliq", *args, "--redis-url", redis_url or self.redis.url, "--queue", self.queue,
               *partitions, "--log-level", "INFO"]
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                 stdin=subprocess.DEVNULL)
        return Proc(role, popen, log)

    def start(self) -> None:
        """Start Redis, the API and the workers (stopping what started if one of them fails)."""
        try:
            self.redis.start()
            self.start_api()
            self.start_monitor()
            for _ in range(self.options.workers):
                self.start_worker()
        except BaseException:
            self.stop()
            raise

    @property
    def monitor_url(self) -> str:
        """Base URL of the monitor (dashboard, /dead, /jobs)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    def _listening(self, proc: Proc, port: int, wait: float) -> Proc:
        deadline = time.monotonic() + wait
        while not answers("127.0.0.1", port):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {proc.role} did not start; see {proc.log.name}")
            time.sleep(0.05)
        return proc

    def start_api(self, wait: float = 60.0) -> Proc:
        """Start the producer API and wait until it listens."""
        self.api = self._spawn("api", ["serve", "--port", str(self.api_port)])
        return self._listening(self.api, self.api_port, wait)

    def start_monitor(self, wait: float = 60.0) -> Proc:
        """Start the monitor and wait until it listens."""
        self.monitor = self._spawn("monitor", ["monitor", "--port", str(self.monitor_port)])
        return self._listening(self.monitor, self.monitor_port, wait)

    def restart(self, proc: Proc) -> Proc:
        """Start a new process of ``proc``'s role (api or monitor) in its place."""
        return self.start_monitor() if proc.role == "monitor" else self.start_api()

    def start_worker(self, redis_url: str | None = None) -> Proc:
        """Start one more worker process (reaching Redis at ``redis_url``: a proxy, say)."""
        o = self.options
        proc = self._spawn("worker", [
            "work", "--app", "reliq.chaos.tasks", "--concurrency", str(o.concurrency), "--lease", str(o.lease),
            "--heartbeat-interval", str(o.heartbeat_interval), "--crash-limit", str(o.crash_limit),
            "--drain-timeout", str(o.drain_timeout), "--retry-base", str(o.retry_base),
            "--max-retries", str(o.max_retries),
        ], redis_url)
        self.workers.append(proc)
        return proc

    def running_workers(self) -> list[Proc]:
        """Workers that are alive and neither stopped nor being shut down."""
        return [w for w in self.workers if w.state == "running" and w.popen.poll() is None]

    def live_pids(self) -> set[int]:
        """Pids of every worker process that still exists."""
        return {w.pid for w in self.workers if w.popen.poll() is None}

    def unexpected_exits(self) -> list[Proc]:
        """Processes that exited without being told to (marked ``exited`` once reported)."""
        gone = []
        for p in [*self.workers, *(s for s in (self.api, self.monitor) if s)]:
            if p.state in ("running", "stopped") and p.popen.poll() is not None:
                p.state = "exited"
                p.log.close()
                gone.append(p)
        return gone

    def kill(self, proc: Proc) -> None:
        """SIGKILL a process and collect it."""
        proc.state = "killed"
        proc.send(signal.SIGKILL)
        proc.popen.wait()
        proc.log.close()

    def terminate(self, proc: Proc, timeout: float) -> int | None:
        """SIGTERM a process and wait for it to exit; its exit code (None: it had to be killed).

        The signal goes only once: a second SIGTERM would skip the worker's drain.
        """
        if proc.state != "terminating":
            proc.state = "terminating"
            proc.send(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return None
        finally:
            proc.log.close()

    def resume_all(self) -> None:
        """SIGCONT everything we may have stopped (Redis and workers)."""
        for server in self.redis.nodes if isinstance(self.redis, LocalCluster) else [self.redis]:
            server.signal(signal.SIGCONT)
        for w in self.workers:
            if w.state == "stopped":
                w.send(signal.SIGCONT)
                w.state = "running"

    def stop(self) -> dict[int, int | None]:
        """Stop every process gracefully; return each remaining worker's exit code by pid."""
        self.resume_all()
        alive = [w for w in self.workers if w.popen.poll() is None]
        for w in alive:
            w.state = "terminating"
            w.send(signal.SIGTERM)
        codes = {w.pid: self.terminate(w, self.options.drain_timeout + 10) for w in alive}
        for server in (self.api, self.monitor):
            if server and server.popen.poll() is None:
                self.terminate(server, 10)
        self.redis.stop()
        return codes
