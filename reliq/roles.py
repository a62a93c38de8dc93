"""Process lifecycles for each role: event loop, signals, servers, worker, shutdown.

``cli.py`` parses flags into settings and calls one ``run_*`` function here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack

from aiohttp import web

from reliq import api, partitions, tracing
from reliq.connection import UNAVAILABLE, connect, is_cluster
from reliq.entry import starting
from reliq.errors import ConfigError, GaveUp, InvalidSchedule
from reliq.eventloop import run
from reliq.monitor import app as monitor
from reliq.outage import GiveUp, Outage
from reliq.preflight import warn_about_redis
from reliq.queue import Queue
from reliq.redis_server import RedisServer, answers
from reliq.registry import REGISTRY
from reliq.schedules import DECLARED
from reliq.settings import Settings, is_loopback
from reliq.web import quiet_bad_requests
from reliq.worker import Worker
from reliq.worker.health import health_app
from reliq.worker.worker import pool_size

log = logging.getLogger(__name__)

#: The port of the default Redis URL, where ``reliq all`` looks for (or starts) Redis.
DEFAULT_REDIS_PORT = 6379

AppFactory = Callable[[Queue, Settings], web.Application]


class Signals:
    """First SIGTERM/SIGINT sets ``stop``; a second one sets ``hard_stop`` (skip the drain)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hard_stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("second %s: skipping the drain", sig.name)
            self.hard_stop.set()
        else:
            log.info("%s: finishing running tasks, then exiting (send again to skip the wait)", sig.name)
            self.stop.set()


def import_apps(modules: tuple[str, ...]) -> None:
    """Import the modules that register handlers (``--app``), and the built-in types."""
    importlib.import_module("reliq.builtins")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import --app {name!r}: {exc}") from exc
        except InvalidSchedule as exc:  # a reliq.periodic declaration that cannot be run
            raise ConfigError(f"--app {name!r}: {exc}") from exc


async def _start_site(stack: AsyncExitStack, app: web.Application, host: str, port: int) -> None:
    quiet_bad_requests()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:  # most often a second `make run`, or another service on the port
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}. Is another reliq (or "
                          "something else) using it? Stop it, or choose another port (see --help)") from exc


async def _open_queue(stack: AsyncExitStack, settings: Settings, max_connections: int,
                      check: bool = True, wait: bool = False) -> Queue:
    """A Queue on a new client (closed with the stack); ``check`` logs Redis's risks once.

    ``wait``: past ``max_connections`` a call waits for its turn, on a cluster too.
    """
    redis = connect(settings.redis_url, max_connections=max_connections, wait_on_cluster=wait)
    stack.push_async_callback(redis.aclose)
    if check:
        try:
            await warn_about_redis(redis)
        except UNAVAILABLE as exc:
            log.warning("Redis at %s is not reachable yet (%s); carrying on and retrying", settings.redis_url, exc)
    return Queue(redis, settings)


async def serve(settings: Settings, sites: list[tuple[AppFactory, int]], work: bool = False,
                burst: bool = False) -> int:
    """Run the given HTTP apps and, with ``work``, a worker, until a signal arrives."""
    if any(factory is not _liveness for factory, _ in sites):
        check_exposure(settings)
    async with AsyncExitStack() as stack:
        signals = Signals()
        # Only a liveness site beside the worker: the process's one client is the worker's.
        alone = work and all(factory is _liveness for factory, _ in sites)
        size = pool_size(is_cluster(settings.redis_url))
        queue = await _open_queue(stack, settings, max_connections=size if alone else 64, wait=alone)
        named = [queue, *(Queue(queue.redis, settings, n) for n, _ in settings.weighted_queues()[1:])]
        if not await _agree(named, settings, signals.stop, wait=work or bool(settings.partitions)):
            return 0
        for factory, port in sites:
            await _start_site(stack, factory(queue, settings), settings.host, port)
            log.info("%s on http://%s:%d", _SITE_NAMES.get(factory, "listening"), settings.host, port)
        if not work:
            await signals.stop.wait()
            return 0
        # The worker gets its own small pool, however many queues it serves and tasks it
        # runs (reliq/worker/worker.py: pool_size); on one server its pub/sub
        # connection comes from it too. A worker alone shares it with its liveness site.
        weighted = settings.weighted_queues()
        first = queue if alone else await _open_queue(stack, settings, max_connections=size, check=False, wait=True)
        mine = [Queue(first.redis, settings, q.name) for q in named]
        if not await _agree(mine, settings, signals.stop, wait=True):
            return 0
        queues = [(queue, weight) for queue, (_, weight) in zip(mine, weighted, strict=True)]
        worker = Worker(queues, settings, REGISTRY, burst=burst, strict=settings.strict,
                        schedules=list(DECLARED.values()))
        log.info("worker %s serving %s with concurrency %d; task types: %s", worker.id,
                 ", ".join(f"{q.name}={w}" + (f" ({len(q.parts_now())} partitions)" if len(q.parts_now()) > 1 else "")
                           for q, w in queues), settings.concurrency, ", ".join(REGISTRY.names()))
        released = await worker.run(signals.stop, signals.hard_stop)
        if worker.threads_left:
            # A timed-out handler's thread is still running and Python would wait for it at
            # exit while the reaper, a lease later, starts its retry elsewhere: end it now.
            logging.shutdown()
            os._exit(1)
        return 0 if released else 1


async def _agree(queues: Sequence[Queue], settings: Settings, stop: asyncio.Event, wait: bool) -> bool:
    """Agree with Redis on each queue's partitions (ConfigError, exit 2, on another --partitions).

    ``wait``: until Redis answers (False if stopped first); else, Redis away, each queue
    reads its map on first use instead.
    """
    async def agree() -> None:
        for queue in queues:
            await partitions.resolve(queue, settings.partitions)

    if not wait:
        # Redis away: the warning about it was logged once already; producers read the map when it answers
        with contextlib.suppress(*UNAVAILABLE):
            await agree()
        return True
    try:
        await Outage("waiting for Redis", log, give_up=GiveUp(when=stop)).call(
            agree, note="the role starts once it answers (it reads the queue's partitions first)")
    except GaveUp:
        return False
    return True


def check_exposure(settings: Settings) -> None:
    """Refuse to serve HTTP on a non-loopback address without a token, unless --insecure."""
    if settings.api_token or settings.insecure or is_loopback(settings.host):
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without RELIQ_API_TOKEN: anyone who can reach it could "
        "enqueue or delete tasks. Set RELIQ_API_TOKEN, listen on 127.0.0.1, or pass --insecure"
    )


def run_work(settings: Settings, burst: bool = False) -> int:
    """``reliq work``: one worker process (and its liveness endpoint, with a health port)."""
    with starting():
        import_apps(settings.apps)
        tracing.configure("worker")  # after the apps: one that set its own tracer provider keeps it
    sites: list[tuple[AppFactory, int]] = [(_liveness, settings.health_port)] if settings.health_port else []
    return run(lambda: serve(settings, sites, work=True, burst=burst))


def _liveness(queue: Queue, settings: Settings) -> web.Application:
    # GET /healthz shows nothing and changes nothing: unlike the API, it needs no token
    # to listen on a pod's address
    return health_app()


#: What the start-up log calls each site, so a newcomer knows which port is which.
_SITE_NAMES: dict[AppFactory, str] = {
    api.create_app: "producer API (POST /task)",
    monitor.create_app: "dashboard (also /stats, /metrics)",
    _liveness: "liveness (GET /healthz)",
}


def run_serve(settings: Settings) -> int:
    """``reliq serve``: the producer API."""
    tracing.configure("api")
    return run(lambda: serve(settings, [(api.create_app, settings.api_port)]))


def run_monitor(settings: Settings) -> int:
    """``reliq monitor``."""
    tracing.configure("monitor")
    return run(lambda: serve(settings, [(monitor.create_app, settings.monitor_port)]))


def own_redis(settings: Settings, port: int = DEFAULT_REDIS_PORT) -> RedisServer | None:
    """Start a private redis-server (AOF on) when no URL was given and nothing answers.

    Raises ConfigError, saying how to get Redis, when there is no redis-server binary.
    """
    if settings.redis_url_given or answers("localhost", port):
        return None
    server = RedisServer(settings.data_dir, port=port).start(tied=True)
    log.info("no Redis on localhost:%d: started redis-server with AOF in %s", port, server.data_dir)
    return server


def run_all(settings: Settings) -> int:
    """``reliq all``: API, monitor and a worker in one process (and Redis, if needed)."""
    with starting():
        import_apps(settings.apps)
        tracing.configure("all")
    server = own_redis(settings)
    try:
        sites: list[tuple[AppFactory, int]] = [(api.create_app, settings.api_port),
                                               (monitor.create_app, settings.monitor_port)]
        return run(lambda: serve(settings, sites, work=True))
    finally:
        if server:
            server.stop()

