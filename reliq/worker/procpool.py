"""Handlers with ``isolation="process"``: a pool of child processes a worker runs them in.

A thread cannot be stopped: a plain handler that overruns its timeout keeps running
(and keeps its slot) until it returns by itself. A child process can be killed. So a
handler that may hang, or that needs a core of its own (CPU-bound work the GIL would
serialise), runs here:

- ``size`` children, started with ``forkserver`` (``spawn`` outside Linux): each starts
  clean, none inherits the worker's Redis connections or threads. A child imports the
  handler's module and finds the handler in its own registry, so the handler must be
  importable by module path (``@reliq.task`` in a module, not in ``__main__``).
- One task at a time per child. Payload and result travel as JSON, exactly as they are
  stored (``orjson``; the result goes into the task record unparsed): a process handler
  takes and returns what any handler does, and the worker never unpickles anything a
  handler produced.
- Timeout (or shutdown): the child is killed with SIGKILL and reaped *before* the
  attempt is settled, so its retry can only start once it is gone; a fresh child
  replaces it. A child that dies by itself (a segfault, ``os._exit``, the OOM killer)
  fails the attempt with an error saying how it died; the worker lives on.
- Cancel and progress: the worker sends a cancel over the pipe; a reader thread in the
  child turns ``ctx.cancelled`` true at once, and the worker kills the child once its
  ``--cancel-grace`` has passed (reliq/worker/cancels.py). ``ctx.progress`` in the child
  sends the latest value to the worker from a thread, at most every :data:`REPORT_S`,
  never after the answer.
- Children ignore SIGINT and SIGTERM (the worker decides when they stop: a Ctrl-C to
  the process group must not kill tasks the drain would let finish) and, on Linux, get
  SIGKILL when their parent dies, so a SIGKILLed worker leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import inspect
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from reliq.errors import HandlerFailed, PermanentError, RateLimited, Snooze, describe_error

log = logging.getLogger(__name__)

#: How long to wait for a killed child to be reaped before giving up on it, seconds.
REAP_S = 5.0
_PR_SET_PDEATHSIG = 1


#: How long a new child may take to import the handlers' modules and say it is ready, seconds.
READY_S = 60.0
_READY = b"ready"
#: The worker's message that the running task's cancel was asked for.
_CANCEL = b"cancel"
#: How often a child sends the progress its handler reported, seconds (the worker writes it once a second).
REPORT_S = 0.2


def _context() -> Any:
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Imported once in the fork server, so a child (and a replacement) starts in milliseconds;
    # the user's modules are not: importing them may open connections a fork must not share.
    ctx.set_forkserver_preload(["reliq.worker.procpool", "reliq.registry", "reliq.builtins", "orjson"])
    return ctx


class Child:
    """One child process and the pipe to it."""

    def __init__(self, apps: Sequence[str]) -> None:
        parent, child = _context().Pipe(duplex=True)
        life_r, self._lifeline = _context().Pipe(duplex=False)  # the child dies when this end closes
        self.conn: Connection = parent
        self.proc: BaseProcess = _context().Process(target=child_main, args=(child, life_r, tuple(apps)),
                                                    name="reliq-child", daemon=True)
        self.proc.start()
        child.close()
        life_r.close()
        self.pid = self.proc.pid or 0
        # Blocking (the pool starts children in threads): a task's timeout must not start
        # while its child is still importing the handlers' modules.
        if not (self.conn.poll(READY_S) and self.conn.recv_bytes() == _READY):
            self.kill()
            raise HandlerFailed(f"child process {self.pid} did not start ({self.death()})")

    @property
    def alive(self) -> bool:
        """Whether the child can take another task."""
        return not self.conn.closed and self.proc.is_alive()

    async def call(self, request: bytes, what: str,
                   on_progress: Callable[[float, str], None] | None = None) -> dict[str, str]:
        """Send one request and wait for the answer; kill the child if cancelled meanwhile.

        What the handler reports with ``ctx.progress`` on the way goes to ``on_progress``.
        Raises HandlerFailed when the child dies before answering.
        """
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = self.conn.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, ready)
        try:
            with contextlib.suppress(OSError):  # the child is gone: the recv below says how
                self.conn.send_bytes(request)
            while True:
                await readable
                answer = self._receive()
                if "progress" not in answer:
                    return answer
                readable = loop.create_future()
                if on_progress is not None:
                    done, message = answer["progress"]
                    on_progress(float(done), str(message))
        except asyncio.CancelledError:
            # A timeout, a cancel past its grace, or the shutdown: the child must be gone
            # before the attempt is settled, or its retry could start beside it.
            log.warning("killing child process %d running %s: cancelled (timeout, cancel or shutdown)",
                        self.pid, what)
            self.kill()
            raise
        finally:
            loop.remove_reader(fd)

    def _receive(self) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = orjson.loads(self.conn.recv_bytes())
            return answer
        except (EOFError, OSError):
            self.kill()
            raise HandlerFailed(f"the child process {self.pid} running the task died ({self.death()}); "
                                "the worker replaced it") from None

    def cancel(self) -> None:
        """Tell the child that its task's cancel was asked for: ``ctx.cancelled`` turns true there."""
        with contextlib.suppress(OSError):
            self.conn.send_bytes(_CANCEL)

    def kill(self) -> None:
        """SIGKILL the child and reap it (a killed process goes within milliseconds)."""
        with contextlib.suppress(OSError):
            self.conn.close()
            self._lifeline.close()
        if self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.join(REAP_S)
        if self.proc.is_alive():
            log.error("child process %d did not die %.0fs after SIGKILL", self.pid, REAP_S)

    def death(self) -> str:
        """How the child ended, in words."""
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class ProcessPool:
    """``size`` child processes; :meth:`child` lends one for a task."""

    def __init__(self, size: int, apps: Sequence[str] = ()) -> None:
        self.size = size
        self.apps = tuple(apps)
        self.children: set[Child] = set()
        self._idle: asyncio.Queue[Child] = asyncio.Queue()
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self._started = False

    async def start(self) -> None:
        """Start every child (in threads: a start blocks for a fork-server round trip)."""
        self._started = True
        await asyncio.gather(*(self._add() for _ in range(self.size)))
        log.info("process pool: %d child process(es) for isolation='process' handlers", self.size)

    async def _add(self) -> None:
        child = await asyncio.to_thread(Child, self.apps)
        if self._closed:
            child.kill()
            return
        self.children.add(child)
        self._idle.put_nowait(child)

    @contextlib.asynccontextmanager
    async def child(self) -> AsyncIterator[Child]:
        """A child for one task, back in the pool afterwards; replaced when it was killed or died."""
        if not self._started:  # the first task starts the pool; the others wait for its children
            self._started = True
            await self.start()
        child = await self._idle.get()
        try:
            yield child
        finally:
            if child.alive:
                self._idle.put_nowait(child)
            else:
                self.children.discard(child)
                if not self._closed:
                    starting = asyncio.get_running_loop().create_task(self._add(), name="procpool-replace")
                    self._starting.add(starting)
                    starting.add_done_callback(self._starting.discard)

    async def close(self) -> None:
        """Stop every child: idle ones see the pipe close and exit, busy ones are killed."""
        self._closed = True
        for starting in list(self._starting):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await starting
        for child in self.children:
            child.conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        for child in self.children:
            await asyncio.to_thread(child.proc.join, max(0.0, deadline - loop.time()))
            child.kill()
        self.children.clear()


def request(module: str, name: str, payload: bytes, ctx: Sequence[Any] | None) -> bytes:
    """The request that runs handler ``name`` of ``module`` on ``payload`` (JSON) in a child."""
    return orjson.dumps({"m": module, "t": name, "p": payload.decode(), "c": ctx})


def result(answer: dict[str, str]) -> Any:
    """A child's answer as the handler's result (an ``orjson.Fragment``: stored unparsed), or its error raised.

    Raises PermanentError, Snooze, RateLimited or HandlerFailed as the handler did in the child.
    """
    if "ok" in answer:
        return orjson.Fragment(answer["ok"]) if answer["ok"] else None
    if "permanent" in answer:
        raise PermanentError(answer["permanent"])
    if "snooze" in answer:
        raise Snooze(float(answer["snooze"]))
    if "not_retried" in answer:
        raise HandlerFailed(answer["not_retried"], retried=False)
    if "rate_limited" in answer:
        raise RateLimited(float(answer["rate_limited"]), answer["error"])
    raise HandlerFailed(answer["error"])


# -- the child's side ----------------------------------------------------------------------


def child_main(conn: Connection, lifeline: Connection, apps: tuple[str, ...]) -> None:
    """A child's whole life: answer one request at a time until the pipe closes.

    It dies with the worker even in the middle of a task: a thread waits for the
    worker's end of ``lifeline`` to close (which happens however the worker ends). The
    parent-death signal alone would not do: the child's parent is the fork server, which
    lives on as long as any child does.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_die_with_worker, args=(lifeline,), name="reliq-lifeline", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in ("reliq.builtins", *apps):
        with contextlib.suppress(ImportError):  # the worker itself imported them: it said so if one failed
            importlib.import_module(name)
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    cancel = threading.Event()
    threading.Thread(target=_read, args=(conn, inbox, cancel), name="reliq-inbox", daemon=True).start()
    outbox = _Outbox(conn)
    conn.send_bytes(_READY)
    while (raw := inbox.get()) is not None:
        cancel.clear()  # a cancel read before this request was for the previous task
        outbox.begin()
        outbox.answer(orjson.dumps(_serve(orjson.loads(raw), cancel, outbox.report)))


def _read(conn: Connection, inbox: queue.SimpleQueue[bytes | None], cancel: threading.Event) -> None:
    """The child's one reader of the pipe: requests go to ``inbox``, a cancel sets ``cancel``.

    A thread, so that a cancel reaches ``ctx.cancelled`` while the handler runs. The
    worker sends a task's cancel only before that task's answer reaches it, and the pipe
    keeps order, so a cancel is always read before the next request.
    """
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            inbox.put(None)
            return
        if raw == _CANCEL:
            cancel.set()
        else:
            inbox.put(raw)


class _Outbox:
    """What the child sends: the progress its handler reports (from a thread, the latest every
    :data:`REPORT_S`) and the answer; never a report after the answer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.running = False
        self.latest: tuple[float, str] | None = None
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def begin(self) -> None:
        with self.lock:
            self.running, self.latest = True, None

    def report(self, done: float, message: str) -> None:
        with self.lock:
            if self.running:
                self.latest = (done, message)
            if self.thread is None:
                self.thread = threading.Thread(target=self._send, name="reliq-progress", daemon=True)
                self.thread.start()
        self.wake.set()

    def answer(self, raw: bytes) -> None:
        with self.lock:
            self.running, self.latest = False, None
            self.conn.send_bytes(raw)

    def _send(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            with self.lock:
                if self.latest is not None:
                    with contextlib.suppress(OSError):
                        self.conn.send_bytes(orjson.dumps({"progress": self.latest}))
                    self.latest = None
            time.sleep(REPORT_S)


def _die_with_worker(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.poll(None)  # the worker never writes: this returns when its end closes
    os.kill(os.getpid(), signal.SIGKILL)


def _serve(request: dict[str, Any], cancel: threading.Event, report: Callable[[float, str], None]) -> dict[str, str]:
    from reliq.registry import REGISTRY, Context, Handler

    handler: Handler | None = None
    try:
        importlib.import_module(request["m"])
        handler = REGISTRY.get(request["t"])
        if handler is None:
            return {"permanent": f"no handler for type {request['t']!r} in module {request['m']!r}"}
        try:
            payload = orjson.loads(request["p"])
        except orjson.JSONDecodeError as exc:
            return {"permanent": f"payload is not valid JSON: {exc}"}
        ctx = Context(*request["c"], cancel=cancel, report=report) if request["c"] else None
        result = handler.call(payload, ctx)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return {"ok": "" if result is None else orjson.dumps(result, default=str).decode()}
    except PermanentError as exc:
        return {"permanent": str(exc)}
    except Snooze as exc:
        return {"snooze": repr(exc.seconds)}
    except RateLimited as exc:
        return {"rate_limited": repr(exc.retry_after), "error": str(exc)}
    except Exception as exc:
        # the type's retry policy is applied here, where the exception's class is known
        retried = handler is None or handler.retry.retries(exc)
        return {"error" if retried else "not_retried": describe_error(exc)}
