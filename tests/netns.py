"""A network namespace with only loopback up: a machine where nothing listens on 6379.

The development machine (and CI's) runs its own Redis on 127.0.0.1:6379, so the path a
newcomer takes, "nothing answers there, start a private redis-server", never runs
outside one. Inside a namespace 127.0.0.1 is a loopback of its own: the default ports
(6379, 8085, 8082) are free, and nothing in it can reach the host's services.

It has no route out either. For ``make run``, whose pip needs PyPI, :meth:`Namespace.proxy`
opens an HTTPS tunnel (HTTP CONNECT, port 443 only) listening inside the namespace and
dialling out from ours, so pip inside works as it does on any machine with a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

#: What a listener made inside the namespace sends back with its file descriptor.
_LISTENER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
back = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(back, [str(s.getsockname()[1]).encode()], [s.fileno()])
"""


def unavailable() -> str | None:
    """Why no namespace can be made here (to skip with), or None when one can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making a network namespace needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian: apt-get install iproute2)"
    return None


class Namespace:
    """``ip netns add`` on enter; on exit every process left in it is killed and it is deleted."""

    def __init__(self, name: str = "") -> None:
        self.name = name or f"reliq-test-{os.getpid()}-{secrets.token_hex(3)}"

    def __enter__(self) -> Namespace:
        _delete_orphans()
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(self.command(["ip", "link", "set", "lo", "up"]), check=True, capture_output=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def pids(self) -> list[int]:
        """Every process that runs inside the namespace now."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        """Kill whatever a failed test left inside, then delete the namespace."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def listener(self) -> tuple[socket.socket, int]:
        """A TCP socket listening on the namespace's 127.0.0.1, held by this process, and its port.

        A socket stays in the namespace it was made in: a short helper makes it inside and
        hands the descriptor back over a socket pair.
        """
        ours, theirs = socket.socketpair()
        with ours, theirs:
            subprocess.run(self.command([sys.executable, "-c", _LISTENER, str(theirs.fileno())]),
                           pass_fds=[theirs.fileno()], check=True, timeout=30)
            port, fds, _, _ = socket.recv_fds(ours, 16, 1)
        return socket.socket(fileno=fds[0]), int(port)

    @contextlib.contextmanager
    def proxy(self) -> Iterator[str]:
        """An HTTPS proxy URL that works inside the namespace (pip's ``HTTPS_PROXY``)."""
        sock, port = self.listener()
        tunnel = _Tunnel(sock)
        tunnel.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tunnel.stop()


def _delete_orphans() -> None:
    """Delete the namespaces of test runs killed before they could (their process is gone)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name, pid in re.findall(r"^(reliq-test-(\d+)-\w+)", listed, flags=re.MULTILINE):
        if not os.path.exists(f"/proc/{pid}"):
            Namespace(name).close()


class _Tunnel:
    """HTTP CONNECT to port 443, on an event loop of its own in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="netns-proxy", daemon=True)
        self.ready = threading.Event()
        self.stopped: asyncio.Event | None = None

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)

    def stop(self) -> None:
        if self.stopped is not None:
            self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(10)

    def _run(self) -> None:
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self.stopped = asyncio.Event()
        server = await asyncio.start_server(self._connect, sock=self.sock)
        self.ready.set()
        async with server:
            await self.stopped.wait()
            server.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or port != "443":
                raise ValueError("only CONNECT to port 443 is tunnelled")
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, 443), 30)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
