"""The producer's blocking Redis: shared by threads, safe across ``fork()``, one round trip a call.

- **Threads**: script calls take a connection from a stack of idle ones (``list.pop`` and
  ``append`` are atomic) or open a new one, so each thread has a connection to itself
  for the length of one call and no lock is held anywhere; other commands go through
  redis-py's sync client, whose pool is thread-safe.
- **Fork**: everything lives in one ``_State`` stamped with the pid that made it. A call
  in another process (a gunicorn ``--preload`` worker, a ``multiprocessing`` child) finds
  the pid changed and builds a new state: new client, new pool, no connections. The
  inherited state is kept but never used nor closed — closing it would run redis-py's
  pool code in the child, which takes the pool's lock, and a thread of the parent may
  have held that lock at the fork (redis-py's own pid check waits 5 s on its fork lock,
  then its ``reset()`` takes the pool lock without a timeout).
- **Speed**: on a single server (``redis://``, ``rediss://``, ``unix://``) a script call is
  one EVALSHA written as one buffer (the command, SHA and keys packed once) with one
  ``sendall``, and its reply read with hiredis: redis-py's ``Script`` call spent about as
  long in its pool and command layers as Redis took to run the script. redis-py still
  opens each connection (TLS, AUTH, SELECT) and closes it. Over plain TCP and Unix
  sockets the timeout is the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``) on a blocking
  socket: a Python timeout makes every send and receive poll first, two more system
  calls, ~7% of a call here (bench/sync_client.py). Cluster and Sentinel URLs go
  through redis-py's client, which routes and follows failovers.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reliq.connection import connect_sync, is_single_server, pool_options
from reliq.scripts import SyncScripts, loaded, loaded_sha, note_no_shebang, refused_shebang

#: What forked children inherited: kept so that it is never garbage-collected (and so
#: never closed) in the child; see the module docstring.
_INHERITED: list[_State] = []


def _bulk(value: bytes | str | int | float) -> bytes:
    """One RESP bulk string (redis-py's packer costs 9 µs a call against 3 for this)."""
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, int):
        value = b"%d" % value
    elif isinstance(value, float):
        value = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


#: Seconds a call may wait for Redis (the same as the asyncio client's).
SOCKET_TIMEOUT_S = 10.0


class _Link:
    """One connection of the fast path: redis-py opens it (TLS, AUTH, SELECT), the round trips are ours."""

    __slots__ = ("conn", "reader", "sock")

    def __init__(self, conn: Any, timeout: float) -> None:
        conn.connect()
        self.conn = conn
        self.sock = sock = conn._sock  # redis-py's connected socket (so named since redis-py 2)
        if not isinstance(sock, ssl.SSLSocket):  # TLS keeps Python's timeout: it reads in records
            limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            sock.settimeout(None)
        # The reader redis-py's hiredis parser makes: error replies become its exceptions.
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)

    def call(self, packed: bytes) -> Any:
        """Send one packed command and return its reply (raise it when it is an error reply)."""
        try:
            self.sock.sendall(packed)
            reply = self.reader.gets()
            while reply is False:
                data = self.sock.recv(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                self.reader.feed(data)
                reply = self.reader.gets()
        except (TimeoutError, BlockingIOError):  # the kernel's timeout is EAGAIN on a blocking socket
            raise RedisTimeoutError("Redis did not answer in time") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error talking to Redis: {exc}") from None
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def disconnect(self) -> None:
        """Close the connection (it is never used again)."""
        self.conn.disconnect()


@dataclass
class _State:
    """One process's connections."""

    url: str
    max_connections: int
    timeout: float = SOCKET_TIMEOUT_S
    pid: int = field(default_factory=os.getpid)
    client: redis.Redis = field(init=False)
    scripts: SyncScripts = field(init=False)
    #: The factory of direct connections, None for Cluster and Sentinel URLs.
    factory: redis.ConnectionPool | None = field(init=False)
    idle: list[_Link] = field(default_factory=list)
    heads: dict[tuple[str, tuple[str, ...]], bytes] = field(default_factory=dict)
    #: A client for blocking calls (Client.wait's BLPOP), made on first use.
    blocking: redis.Redis | None = None

    def __post_init__(self) -> None:
        self.client = connect_sync(self.url, max_connections=self.max_connections)
        self.scripts = SyncScripts(self.client)
        self.factory = None
        if is_single_server(self.url):
            options = pool_options(self.max_connections, self.timeout)
            del options["max_connections"], options["timeout"]  # the stack grows with the threads
            self.factory = redis.ConnectionPool.from_url(self.url, **options)

    def head(self, name: str, keys: Sequence[str]) -> bytes:
        """EVALSHA, the script's SHA, the number of keys and the keys, packed once (again after
        a Redis refused the scripts' shebangs: then the SHA is that of the text without)."""
        index = (name, tuple(keys))
        parts: list[bytes | str | int | float]
        packed = self.heads.get(index)
        if packed is None:
            parts = ["EVALSHA", loaded_sha(name), len(keys), *keys]
            packed = self.heads[index] = b"".join([_bulk(a) for a in parts])
        return packed


class SyncRedis:
    """A Redis of one process at a time for blocking producers: see the module docstring."""

    def __init__(self, url: str, max_connections: int = 16, timeout: float = SOCKET_TIMEOUT_S) -> None:
        self._state = _State(url, max_connections, timeout)

    def _current(self) -> _State:
        state = self._state
        if state.pid != os.getpid():  # forked: start afresh, touch nothing inherited
            _INHERITED.append(state)
            state = self._state = _State(state.url, state.max_connections, state.timeout)
        return state

    @property
    def client(self) -> redis.Redis:
        """redis-py's sync client of this process, for commands other than scripts."""
        return self._current().client

    def blocking(self, block_s: float, max_connections: int) -> redis.Redis:
        """This process's client for blocking commands, apart from the one other calls use.

        Its sockets wait ``block_s`` plus a margin, so a long BLPOP is not cut off; its
        pool holds ``max_connections``, and a thread past them waits for one.
        """
        state = self._current()
        if state.blocking is None:
            state.blocking = connect_sync(state.url, max_connections=max_connections, socket_timeout=block_s + 5)
        return state.blocking

    def script(self, name: str, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> Any:
        """Run script ``name`` (EVALSHA, loading it on NOSCRIPT, e.g. after a Redis restart)."""
        state = self._current()
        if state.factory is None:
            return state.scripts(name, list(keys), list(args))
        tail = b"".join([_bulk(a) for a in args])
        packed = _pack(state, name, keys, len(args), tail)
        for attempt in (1, 2):
            try:
                conn, fresh = state.idle.pop(), False
            except IndexError:
                conn, fresh = _Link(state.factory.make_connection(), state.timeout), True
            try:
                reply = _round_trip(conn, packed, state, name, keys, len(args), tail)
            except ResponseError:
                state.idle.append(conn)  # the error reply was read whole: the connection is fine
                raise
            except RedisConnectionError:
                conn.disconnect()
                # An idle connection the server closed meanwhile (a restart, its idle
                # timeout) fails before anything ran: once more on a new connection.
                # A timeout is not retried: the script may have run.
                if fresh or attempt == 2:
                    raise
                continue
            except BaseException:
                conn.disconnect()  # a reply may be left unread: never reuse the connection
                raise
            state.idle.append(conn)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close this process's connections (a forked child's inherited ones stay untouched)."""
        state = self._state
        if state.pid != os.getpid():
            return
        while state.idle:
            state.idle.pop().disconnect()
        state.client.close()
        if state.blocking is not None:
            state.blocking.close()


def _round_trip(link: _Link, packed: bytes, state: _State, name: str, keys: Sequence[str], nargs: int,
                tail: bytes) -> Any:
    """Call script ``name``: ``packed`` is :func:`_pack`'s, of ``keys`` and ``nargs``, ``tail``."""
    try:
        return link.call(packed)
    except NoScriptError:  # a restarted or flushed server, or the first call on it: load the script, call again
        pass
    try:
        _load(link, name)
    except ResponseError as exc:
        # Redis < 7 cannot compile a shebang: load the text without, as reliq.scripts' clients do
        if not refused_shebang(name, exc):
            raise
        note_no_shebang()
        _load(link, name)
    # packed anew: the text loaded may be another than the one ``packed`` names by its SHA
    # (the shebang refused just now, here or in another thread)
    state.heads.pop((name, tuple(keys)), None)
    return link.call(_pack(state, name, keys, nargs, tail))


def _load(link: _Link, name: str) -> None:
    link.call(b"*3\r\n" + b"".join([_bulk(a) for a in ("SCRIPT", "LOAD", loaded(name))]))


def _pack(state: _State, name: str, keys: Sequence[str], nargs: int, tail: bytes) -> bytes:
    """The EVALSHA of script ``name``, of ``keys`` and the ``nargs`` arguments packed in ``tail``: one buffer."""
    return b"*%d\r\n%s%s" % (3 + len(keys) + nargs, state.head(name, keys), tail)
