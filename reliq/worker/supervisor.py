"""``reliq work --processes N``: N worker processes on one machine, kept running.

Python runs one event loop on one core, so a machine's other cores need other
processes. The supervisor starts N children (``python -m reliq work``, each its own
event loop, concurrency and worker id), restarts one that dies with a growing delay,
and on SIGTERM/SIGINT forwards the signal so that every child drains; it exits 0 when
all of them exited cleanly. A second signal is forwarded too: the children skip the drain.

Children get the resolved settings through ``RELIQ_*`` environment variables, run in
their own process group (a terminal's Ctrl-C reaches them once, through the
supervisor, not twice) and, on Linux, receive SIGTERM if the supervisor itself dies.

With ``--health-port`` the supervisor answers ``GET /healthz`` (200 while every child is
running or being restarted promptly, 503 when one has been crash-looping for a minute)
and the children open no port; a lone worker (N = 1) serves it itself, see
:func:`reliq.worker.health.health_app`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from aiohttp import web

from reliq.children import die_with_parent
from reliq.errors import ConfigError
from reliq.outage import Backoff
from reliq.settings import Settings
from reliq.worker.health import health_app

log = logging.getLogger(__name__)

#: A child that ran this long before dying is restarted at once, not after a long backoff.
STABLE_S = 30.0
#: Exit status of a child that refused its configuration: restarting it cannot help.
CONFIG_EXIT = 2
#: A slot without a running child for this long makes /healthz answer 503.
UNHEALTHY_AFTER_S = 60.0


def resolve_processes(value: str | int) -> int:
    """``auto`` -> the cores this process may run on; otherwise a whole number >= 1."""
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--processes must be a whole number >= 1 or 'auto', not {value!r}")
    return n


def child_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus every setting as ``RELIQ_<FIELD>``, so a child loads exactly these settings."""
    env = dict(base)
    for f in dataclasses.fields(settings):
        if f.name == "redis_url_given":
            continue
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"RELIQ_{f.name.upper()}"] = str(value)
    env["RELIQ_HEALTH_PORT"] = "0"  # the supervisor answers health checks, not each child
    env["RELIQ_PROCESSES"] = "1"  # a child is one worker, never a supervisor itself
    return env


class Supervisor:
    """Keeps ``processes`` worker processes running until a signal asks them all to drain."""

    def __init__(self, settings: Settings, processes: int, *, burst: bool = False, log_level: str = "INFO",
                 log_format: str = "text", backoff_first: float = 0.5, backoff_cap: float = 30.0) -> None:
        self.settings = settings
        self.processes = processes
        self.burst = burst
        self.log_level = log_level
        self.log_format = log_format
        self.backoff = (backoff_first, backoff_cap)
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._down_since: dict[int, float] = {}
        self._stop = asyncio.Event()
        self._signals = 0

    def command(self) -> list[str]:
        """The command line of one child."""
        args = [sys.executable, "-m", "reliq", "work", "--log-level", self.log_level, "--log-format", self.log_format]
        return args + (["--burst"] if self.burst else [])

    async def run(self) -> int:
        """Run the children until they all exit; 0 when every one exited cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)
        try:
            codes = await asyncio.gather(*(self._keep(slot) for slot in range(self.processes)))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        bad = [c for c in codes if c != 0]
        if bad:
            log.error("%d of %d worker process(es) did not exit cleanly: %s", len(bad), self.processes, bad)
            return CONFIG_EXIT if CONFIG_EXIT in bad else 1
        return 0

    def _received(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: asking %d worker process(es) to drain", sig.name, len(self.children))
        else:
            log.warning("%s again: worker processes skip the drain", sig.name)
        self._stop.set()
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for proc in self.children.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    async def _keep(self, slot: int) -> int:
        """Run slot ``slot``'s child, restarting it with backoff, until stopped; its last exit code."""
        backoff = Backoff(*self.backoff)
        env = child_env(self.settings, os.environ)
        while True:
            proc = await asyncio.create_subprocess_exec(
                *self.command(), env=env, process_group=0, preexec_fn=die_with_parent(os.getpid()))
            self.children[slot] = proc
            self._down_since.pop(slot, None)
            if self._stop.is_set():  # a signal came while it was starting
                proc.send_signal(signal.SIGTERM)
            log.info("worker process %d started (pid %d)", slot, proc.pid)
            started = time.monotonic()
            code = await proc.wait()
            if self._stop.is_set():
                # killed by the forwarded signal itself: it had not yet installed its
                # handlers, so it had not claimed anything either
                return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else code
            if self.burst and code == 0:
                return code
            if code == CONFIG_EXIT:
                log.error("worker process %d refused its configuration (exit %d): stopping all", slot, code)
                self._stop.set()
                self._forward(signal.SIGTERM)
                return code
            self._down_since[slot] = time.monotonic()
            if time.monotonic() - started > STABLE_S:
                backoff.reset()
            delay = backoff.next()
            log.warning("worker process %d (pid %d) exited with %s; restarting in %.1fs",
                        slot, proc.pid, _exit_status(code), delay)
            self.restarts += 1
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return 0  # stopped while waiting to restart: nothing of this slot is running
            except TimeoutError:
                pass

    def healthy(self) -> bool:
        """False when some slot has had no running child for over a minute (a crash loop)."""
        now = time.monotonic()
        return all(now - since < UNHEALTHY_AFTER_S for since in self._down_since.values())

    def status(self) -> dict[str, object]:
        """What /healthz reports."""
        return {"status": "ok" if self.healthy() else "crash-looping", "processes": self.processes,
                "running": sum(1 for p in self.children.values() if p.returncode is None),
                "restarts": self.restarts}


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


async def _supervise(supervisor: Supervisor, health_port: int, host: str) -> int:
    runner = None
    if health_port:
        runner = web.AppRunner(health_app(supervisor), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, health_port, reuse_address=True).start()
        log.info("health checks on http://%s:%d/healthz", host, health_port)
    try:
        return await supervisor.run()
    finally:
        if runner:
            await runner.cleanup()


def run_supervisor(settings: Settings, processes: int, *, burst: bool = False, log_level: str = "INFO",
                   log_format: str = "text") -> int:
    """``reliq work --processes N`` with N > 1: supervise N worker processes; the exit code."""
    log.info("supervising %d worker processes of queue %r", processes, settings.queue)
    supervisor = Supervisor(settings, processes, burst=burst, log_level=log_level, log_format=log_format)
    return asyncio.run(_supervise(supervisor, settings.health_port, settings.host))
