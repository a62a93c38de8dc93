"""A private ``redis-server`` child: for ``reliq all`` without a Redis, tests and chaos runs."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from reliq.children import die_with_parent
from reliq.errors import ConfigError

INSTALL_HINT = (
    "no redis-server binary found on PATH; install Redis (Debian/Ubuntu: "
    "'apt-get install redis-server', macOS: 'brew install redis') or pass --redis-url"
)


#: Where :func:`free_port` records the ports it handed out, for every process of the machine.
PORT_LEDGER = Path(tempfile.gettempdir()) / "reliq-ports"
#: How long a port handed out stays promised to its taker (seconds): ample time to bind it.
PORT_CLAIM_SECONDS = 600
#: The first port :func:`free_port` hands out; the last is just below the kernel's ephemeral range.
PORT_LOW = 20000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, promised to this caller alone for a while.

    Binding to port 0 and letting go of the socket races: until the caller's server binds the
    port, the kernel may hand it to another process's bind(0) (parallel test workers: two
    redis-servers on one port) or to an outgoing connection. So ports come from below the
    kernel's ephemeral range, where it never picks one itself, at random, and each one handed
    out is written in a ledger that every process of the machine reads under a lock: no two
    callers get the same port within :data:`PORT_CLAIM_SECONDS`. Without a ledger (a
    read-only temp dir) or room below the ephemeral range, it falls back to bind(0).
    """
    high = _ephemeral_low()
    if high - PORT_LOW < 1000:
        return _kernel_port()
    try:
        fd = os.open(PORT_LEDGER, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return _kernel_port()
    with os.fdopen(fd, "r+") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)  # released when the file closes
        now = time.time()
        claims: dict[int, int] = {}
        for line in ledger:
            taken, _, until = line.partition(" ")
            if taken.isdigit() and until.strip().isdigit() and int(until) > now:
                claims[int(taken)] = int(until)
        port = next((p for p in (random.randrange(PORT_LOW, high) for _ in range(500))
                     if p not in claims and _bindable(p)), 0)
        if not port:
            return _kernel_port()
        claims[port] = int(now) + PORT_CLAIM_SECONDS
        ledger.seek(0)
        ledger.truncate()
        ledger.write("".join(f"{p} {until}\n" for p, until in claims.items()))
    return port


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stop a child process with SIGTERM, and SIGKILL it if it is not gone within ``timeout``."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A redis-server we start, own and stop; AOF on unless ``aof=False``.

    ``wrap``: a command it runs under (``valgrind --tool=callgrind ...``, for benchmarks).
    ``binary``: the redis-server to run (another version, for tests); the one on PATH by default.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, *, aof: bool = True,
                 fsync: str = "everysec", extra: tuple[str, ...] = (), wrap: tuple[str, ...] = (),
                 binary: str | Path | None = None) -> None:
        found = str(binary) if binary is not None else shutil.which("redis-server")
        if found is None:
            raise ConfigError(INSTALL_HINT)
        self.binary = found
        # redis-server changes into --dir before it opens --logfile and the AOF, so a
        # relative path would be taken twice over (./.reliq/redis/./.reliq/redis/...):
        # everything handed to it is made absolute here, the one place that starts it.
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.aof = aof
        self.fsync = fsync
        self.extra = extra
        self.wrap = wrap
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line."""
        args = [*self.wrap, self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no", "--maxmemory-policy", "noeviction",
                "--logfile", str(self.data_dir / "redis.log")]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", self.fsync]
        return args + list(self.extra)

    def start(self, timeout: float = 10.0, *, tied: bool = False) -> RedisServer:
        """Start the server and wait until it answers.

        ``tied``: the server belongs to this process (``reliq all``'s own Redis). It runs
        in its own process group, so a Ctrl-C at the terminal reaches only us and we stop
        it after the worker has drained (had it stopped at once, the drain could not hand
        tasks back); and it gets SIGTERM if we are killed, so it never outlives us. Start
        it from the main thread (see :func:`reliq.children.die_with_parent`).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stderr = self.data_dir / "redis.stderr"
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=err,
                                         process_group=0 if tied else None,
                                         preexec_fn=die_with_parent(os.getpid()) if tied else None)
        deadline = time.monotonic() + timeout
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None:
                log = self.data_dir / "redis.log"
                text = stderr.read_text() + (log.read_text() if log.exists() else "")
                raise ConfigError(f"redis-server exited: {text[-2000:]}")
            if time.monotonic() > deadline:
                raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout}s")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash, for tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGSTOP/SIGCONT for stalls)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM), killing it if it does not go."""
        terminate(self.proc)
