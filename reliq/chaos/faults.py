"""Fault injectors of a chaos run, the plan that schedules them, and the log of what was done.

Two streams run beside the load: one SIGKILLs a random worker every few seconds, the
other works through the other kinds one at a time (poison pill first, since its three
crashes take longest to play out). Every signal sent to a process is logged as an
``Event`` with its wall-clock time, so the audit can tell which fault explains which
duplicate, and how long each kill took to recover from.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from reliq.chaos.cluster import Cluster, Proc
from reliq.chaos.proxy import Proxy
from reliq.chaos.tasks import BLOCK, FAIL, POISON
from reliq.connection import UNAVAILABLE, connect
from reliq.redis_server import RedisServer

#: Fault kinds, in report order.
KINDS = ("worker-kill", "rolling-restart", "redis-kill", "redis-stall", "worker-stall", "partition", "poison",
         "api-kill", "redis-full", "loop-block", "monitor-kill")


@dataclass
class Event:
    """One thing done to (or seen of) a process: kill, term, stop, cont, start, died."""

    t: float  # unix seconds
    role: str  # worker | api | monitor | redis
    pid: int
    action: str


@dataclass
class Fault:
    """One injected fault: its kind, when it began and ended, and the pids it hit."""

    kind: str
    at: float
    until: float
    pids: list[int] = field(default_factory=list)
    detail: str = ""


class FaultLog:
    """Every fault and process event of a run."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.events: list[Event] = []

    def event(self, role: str, pid: int, action: str) -> None:
        """Record an event now."""
        self.events.append(Event(time.time(), role, pid, action))

    def to_json(self) -> dict[str, Any]:
        """Faults and events as plain data."""
        return {"faults": [asdict(f) for f in self.faults], "events": [asdict(e) for e in self.events]}


#: Faults a run on a Redis Cluster leaves out: the proxy fronts one node, and a cluster
#: client follows the cluster's redirects to the nodes' own addresses, past it.
NOT_ON_A_CLUSTER = ("partition",)


def plan(duration: float, rng: random.Random, skip: tuple[str, ...] = ()) -> list[str]:
    """The sequential faults of a run: every kind once (poison first), more rounds when time allows."""
    others = [k for k in KINDS if k not in ("worker-kill", "poison", *skip)]
    rounds = max(1, int(duration // 30))
    kinds: list[str] = []
    for _ in range(rounds):
        rng.shuffle(others)
        kinds += ["poison", *others]
    return kinds


class Injector:
    """Injects faults into a cluster and logs them."""

    def __init__(self, cluster: Cluster, log: FaultLog, rng: random.Random,
                 submit: Callable[[str, Any], Awaitable[str | None]]) -> None:
        self.cluster = cluster
        self.log = log
        self.rng = rng
        self.submit = submit
        self.lease = cluster.options.lease
        self.proxy: Proxy | None = None

    async def _fault(self, kind: str, action: Callable[[], Awaitable[tuple[list[int], str]]]) -> None:
        at = time.time()
        pids, detail = await action()
        self.log.faults.append(Fault(kind, at, time.time(), pids, detail))

    def _start_worker(self, redis_url: str | None = None) -> Proc:
        proc = self.cluster.start_worker(redis_url)
        self.log.event("worker", proc.pid, "start")
        return proc

    def _pick(self, settled: float = 0.0) -> Proc | None:
        """A random running worker, preferring one started over ``settled`` seconds ago."""
        running = self.cluster.running_workers()
        old = [w for w in running if w.started < time.time() - settled]
        return self.rng.choice(old or running) if running else None

    # -- the faults ------------------------------------------------------------------

    async def kill_worker(self) -> None:
        """SIGKILL a random running worker and start a replacement."""
        async def act() -> tuple[list[int], str]:
            victim = self._pick()
            if victim is None:
                return [], "no running worker"
            self.log.event("worker", victim.pid, "kill")
            self.cluster.kill(victim)
            self._start_worker()
            return [victim.pid], ""
        await self._fault("worker-kill", act)

    async def rolling_restart(self) -> None:
        """A deploy: for each worker, start its replacement, then SIGTERM it and wait for it to exit."""
        async def act() -> tuple[list[int], str]:
            pids, codes = [], []
            for old in self.cluster.running_workers():
                if old.state != "running" or old.popen.poll() is not None:
                    continue  # killed or stalled by the other stream meanwhile
                self._start_worker()
                self.log.event("worker", old.pid, "term")
                wait = self.cluster.options.drain_timeout + 10
                codes.append(await asyncio.to_thread(self.cluster.terminate, old, wait))
                self.log.event("worker", old.pid, "exited")
                pids.append(old.pid)
            return pids, f"exit codes {codes}"
        await self._fault("rolling-restart", act)

    async def _redis_victim(self) -> tuple[RedisServer, str]:
        """The Redis process a fault hits: the server, or a random primary of the cluster; and its name."""
        servers = await asyncio.to_thread(self.cluster.redis_servers)
        server = self.rng.choice(servers)
        return server, f"primary :{server.port}, " if len(servers) > 1 else ""

    async def kill_redis(self) -> None:
        """SIGKILL redis-server (one primary, on a cluster) and restart it on its AOF a second later."""
        async def act() -> tuple[list[int], str]:
            redis, which = await self._redis_victim()
            pid = redis.proc.pid if redis.proc else 0
            self.log.event("redis", pid, "kill")
            redis.kill()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.cluster.restart_redis, redis)
            self.log.event("redis", redis.proc.pid if redis.proc else 0, "start")
            return [pid], f"{which}down 1.0s, restarted on its AOF"
        await self._fault("redis-kill", act)

    async def stall_redis(self) -> None:
        """SIGSTOP redis-server (one primary, on a cluster) for longer than the lease, then SIGCONT it."""
        seconds = self.lease + 1.0
        async def act() -> tuple[list[int], str]:
            redis, which = await self._redis_victim()
            pid = redis.proc.pid if redis.proc else 0
            self.log.event("redis", pid, "stop")
            redis.signal(signal.SIGSTOP)
            await asyncio.sleep(seconds)
            redis.signal(signal.SIGCONT)
            self.log.event("redis", pid, "cont")
            return [pid], f"{which}stopped {seconds:g}s"
        await self._fault("redis-stall", act)

    async def stall_worker(self) -> None:
        """SIGSTOP a worker past its lease, then SIGCONT it: a zombie wakes up holding reclaimed work."""
        seconds = self.lease + 1.5
        async def act() -> tuple[list[int], str]:
            victim = self._pick(settled=3.0)  # registered and holding work, or the stall proves nothing
            if victim is None:
                return [], "no running worker"
            victim.state = "stopped"
            self.log.event("worker", victim.pid, "stop")
            victim.send(signal.SIGSTOP)
            await asyncio.sleep(seconds)
            victim.send(signal.SIGCONT)
            victim.state = "running"
            self.log.event("worker", victim.pid, "cont")
            return [victim.pid], f"stopped {seconds:g}s"
        await self._fault("worker-stall", act)

    async def partition(self) -> None:
        """Cut one worker off from Redis: a hold past the lease, then a reset, then heal.

        The worker reaches Redis through a proxy of the run's; the rest of the fleet does
        not. While held, its heartbeats stop arriving, so it is taken for dead and its
        tasks run elsewhere; what it sends meanwhile (late acks) arrives after the heal and
        must be dropped. The reset then closes its connections, which it must reopen.
        """
        seconds = self.lease + 1.5
        async def act() -> tuple[list[int], str]:
            if self.proxy is None:
                [server] = self.cluster.redis_servers()  # one server: never on a cluster (NOT_ON_A_CLUSTER)
                self.proxy = await Proxy(server.port).start()
            victim = self._start_worker(self.proxy.url)
            await asyncio.sleep(3.0)  # registered and holding work, or the partition proves nothing
            if victim.popen.poll() is not None or victim.state != "running":
                return [victim.pid], "the partitioned worker was gone before the cut"
            self.log.event("worker", victim.pid, "partition")
            self.proxy.hold()
            await asyncio.sleep(seconds)
            self.proxy.drop()
            await asyncio.sleep(0.5)
            self.proxy.restore()
            self.log.event("worker", victim.pid, "heal")
            return [victim.pid], f"held {seconds:g}s, reset, healed"
        await self._fault("partition", act)

    async def close(self) -> None:
        """Stop the proxy, if a partition started one."""
        if self.proxy is not None:
            await self.proxy.close()

    async def _submit(self, type: str, payload: Any) -> str | None:
        for _ in range(20):  # the API may be down for a moment (another fault)
            if task_id := await self.submit(type, payload):
                return task_id
            await asyncio.sleep(0.25)
        return None

    async def poison(self) -> None:
        """Enqueue a task whose handler SIGKILLs its own worker, every time it runs."""
        async def act() -> tuple[list[int], str]:
            task_id = await self._submit(POISON, {})
            return [], f"task {task_id}" if task_id else "not accepted"
        await self._fault("poison", act)

    async def block_loop(self) -> None:
        """Enqueue a task whose async handler blocks its worker's loop past the lease.

        The worker's heartbeat (a thread) must keep it alive, so the task and every other
        one the worker holds run exactly once: a duplicate here is unexplained, a failure.
        """
        seconds = self.lease + 1.5
        async def act() -> tuple[list[int], str]:
            task_id = await self._submit(BLOCK, {"s": seconds})
            await asyncio.sleep(seconds + 0.5)
            return [], f"task {task_id} blocks {seconds:g}s" if task_id else "not accepted"
        await self._fault("loop-block", act)

    async def fill_redis(self, seconds: float = 3.0) -> None:
        """Lower Redis's maxmemory (one primary's, on a cluster) to what it uses now, under load, then lift it.

        Producers must get 507 (not promised, so not lost); workers must keep draining,
        since the scripts that empty a queue run at the limit.
        """
        async def act() -> tuple[list[int], str]:
            server, which = await self._redis_victim()
            redis = connect(server.url)
            try:
                used = int((await redis.info("memory"))["used_memory"])
                await redis.config_set("maxmemory", used + 64 * 1024)
                await asyncio.sleep(seconds)
                await redis.config_set("maxmemory", 0)
            except UNAVAILABLE as exc:  # another fault took Redis away: it comes back without the limit
                return [], f"interrupted: {exc}"
            finally:
                await redis.aclose()
            return [], f"{which}maxmemory {used + 64 * 1024} bytes (used + 64 KiB) for {seconds:g}s"
        await self._fault("redis-full", act)

    async def kill_api(self) -> None:
        """SIGKILL the API while requests are in flight, and start it again."""
        async def act() -> tuple[list[int], str]:
            api = self.cluster.api
            if api is None:
                return [], "no API"
            self.log.event("api", api.pid, "kill")
            self.cluster.kill(api)
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(self.cluster.start_api)
            self.log.event("api", new.pid, "start")
            return [api.pid], ""
        await self._fault("api-kill", act)

    async def kill_monitor_mid_requeue(self) -> None:
        """Start a rate-limited requeue of the dead ``chaos.fail`` tasks, SIGKILL the monitor
        running it, and start the monitor again.

        What the job requeued before the kill must run again (and die again: they always
        fail), what it had not reached stays dead, and nothing is lost or requeued twice.
        Only ``chaos.fail`` is requeued: a requeued poison pill would crash-loop the fleet.
        """
        async def act() -> tuple[list[int], str]:
            monitor = self.cluster.monitor
            if monitor is None:
                return [], "no monitor"
            body = {"type": FAIL, "reason": "error", "rate": 20}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                        http.post(self.cluster.monitor_url + "/dead/requeue", json=body) as resp:
                    answer = f"requeue job: HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                answer = f"requeue job not started: {type(exc).__name__}"
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            self.log.event("monitor", monitor.pid, "kill")
            self.cluster.kill(monitor)
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(self.cluster.start_monitor)
            self.log.event("monitor", new.pid, "start")
            return [monitor.pid], answer
        await self._fault("monitor-kill", act)

    def by_kind(self, kind: str) -> Callable[[], Awaitable[None]]:
        """The injector of ``kind``."""
        return {
            "worker-kill": self.kill_worker, "rolling-restart": self.rolling_restart,
            "redis-kill": self.kill_redis, "redis-stall": self.stall_redis, "worker-stall": self.stall_worker,
            "partition": self.partition, "poison": self.poison, "api-kill": self.kill_api,
            "redis-full": self.fill_redis, "loop-block": self.block_loop,
            "monitor-kill": self.kill_monitor_mid_requeue,
        }[kind]

    # -- the streams --------------------------------------------------------------------

    async def kill_stream(self, until: float, every: tuple[float, float] = (2.5, 4.5)) -> None:
        """SIGKILL a random worker every few seconds until ``until`` (monotonic)."""
        while True:
            await asyncio.sleep(self.rng.uniform(*every))
            if time.monotonic() >= until:
                return
            await self.kill_worker()

    async def sequence(self, kinds: list[str], until: float, gap: float = 1.0) -> None:
        """Run ``kinds`` one after another; past ``until`` only the first round is finished."""
        first_round = len(set(kinds))
        for i, kind in enumerate(kinds):
            if i >= first_round and time.monotonic() >= until:
                return
            await asyncio.sleep(gap)
            await self.by_kind(kind)()

    async def supervise(self) -> None:
        """Notice processes that died on their own (the poison pill), log them and replace them."""
        while True:
            for proc in self.cluster.unexpected_exits():
                self.log.event(proc.role, proc.pid, f"died {proc.popen.returncode}")
                if proc.role == "worker":
                    self._start_worker()
                else:
                    new = await asyncio.to_thread(self.cluster.restart, proc)
                    self.log.event(new.role, new.pid, "start")
            await asyncio.sleep(0.05)
