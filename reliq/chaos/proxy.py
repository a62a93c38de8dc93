"""A TCP proxy on 127.0.0.1 that a chaos run puts between one worker and Redis, to cut it off.

Three modes, switched at any time:

- ``pass``: bytes flow both ways;
- ``hold``: a partition in which packets are lost and TCP keeps retrying: connections stay
  open, nothing is delivered either way (what was in flight arrives after ``restore``),
  and new connections are accepted but carry nothing. The worker's heartbeats stop
  reaching Redis, so the fleet must take it for dead, while the worker itself sees only
  slow calls;
- ``drop``: the link resets: every connection is closed and new ones are closed at once,
  so the worker sees connection errors and must reconnect once restored.

It runs on the chaos run's own event loop; nothing of it is in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["pass", "hold", "drop"]
#: Bytes read from one side at a time.
CHUNK = 65536


class Proxy:
    """Forwards connections on ``127.0.0.1:port`` to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """A redis:// URL that reaches the target through this proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, port: int = 0) -> Proxy:
        """Listen (on a free port unless one is given)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def hold(self) -> None:
        """Stop delivering bytes, keeping every connection open."""
        self.mode = "hold"
        self._flowing.clear()

    def drop(self) -> None:
        """Close every connection now and every new one until :meth:`restore`."""
        self.mode = "drop"
        self._flowing.clear()
        for pump in list(self._pumps):
            pump.cancel()  # its finally closes both ends

    def restore(self) -> None:
        """Let bytes flow again (what a hold kept back is delivered)."""
        self.mode = "pass"
        self._flowing.set()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy right now."""
        return len(self._writers) // 2

    async def close(self) -> None:
        """Stop listening and close everything."""
        if self._server:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            client_w.close()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()  # the target is down: the client sees a reset, as it would directly
            return
        self._writers.update((client_w, server_w))
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            pump = asyncio.create_task(self._pump(reader, writer, client_w, server_w))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *pair: asyncio.StreamWriter) -> None:
        """Copy one direction until either side closes, then close both."""
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in pair:
                self._writers.discard(w)
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
