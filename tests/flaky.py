"""Redis outages injected in-process, for unit tests of the loops that must ride them out.

:class:`Flaky` wraps one client (as asynq's ``internal/testbroker`` wraps its broker):
the next N calls fail, or every call while it is :meth:`~Flaky.down`, or every call
hangs until cancelled and then fails as redis-py does when a cancellation lands inside
a command (:meth:`~Flaky.stall`); optionally only the calls of one script. Everything
else goes to the real Redis underneath. Tests wait on its counts (:meth:`~Flaky.until`)
instead of sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from reliq import scripts

#: What fails unless a test says otherwise: a lost connection.
OUTAGE = RedisConnectionError("flaky: injected outage")


class Flaky:
    """Fails the calls of ``client`` (commands, scripts, pipelines) on demand.

    Counts, each a total since the start: ``started`` calls made, ``stalled`` calls
    hanging, ``failed`` calls failed on purpose, ``passed`` calls Redis answered.
    """

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.started = self.stalled = self.failed = self.passed = 0
        self._fail_next = self._lose_next = 0
        self._down = self._stall = False
        self._error: BaseException = OUTAGE
        self._only: str | None = None  # the SHA of the one script that fails, if only one does
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self._execute_command = client.execute_command
        self._pipeline = client.pipeline
        # instance attributes shadow the methods: every command and script call (EVALSHA)
        # goes through execute_command, a pipeline through its own execute
        client.execute_command = self._command  # type: ignore[method-assign]
        client.pipeline = self._new_pipeline  # type: ignore[method-assign]

    def fail_next(self, n: int, error: BaseException = OUTAGE, script: str | None = None) -> None:
        """Make the next ``n`` calls (of ``script`` alone, if named) raise ``error``."""
        self._fail_next, self._error = n, error
        self._only = None if script is None else scripts.sha(script)

    def lose_next(self, n: int, script: str | None = None) -> None:
        """Make the next ``n`` calls (of ``script`` alone, if named) run in Redis, then raise as if the reply was lost.

        What a connection cut after the command ran does: its effects happened, the caller never hears.
        """
        self._lose_next = n
        self._only = None if script is None else scripts.sha(script)

    def down(self, error: BaseException = OUTAGE, script: str | None = None) -> None:
        """Fail every call (of ``script`` alone, if named) until :meth:`up`."""
        self._down, self._error = True, error
        self._only = None if script is None else scripts.sha(script)

    def stall(self, script: str | None = None) -> None:
        """Make every call (of ``script`` alone, if named) hang until cancelled, then raise ConnectionError.

        That is what redis-py may do when a cancellation lands inside a command: a loop
        that retries connection errors would then swallow its own cancellation.
        """
        self._stall = True
        self._only = None if script is None else scripts.sha(script)

    def up(self) -> None:
        """Redis is back: every call goes through again."""
        self._down = self._stall = False
        self._fail_next = self._lose_next = 0

    async def until(self, *, started: int = 0, stalled: int = 0, failed: int = 0, passed: int = 0,
                    timeout: float = 10.0) -> None:
        """Wait until at least so many calls have started, stalled, failed and passed."""
        waits = []
        for kind, n in (("started", started), ("stalled", stalled), ("failed", failed), ("passed", passed)):
            if getattr(self, kind) < n:
                future = asyncio.get_running_loop().create_future()
                self._waiters.append((kind, n, future))
                waits.append(future)
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)

    async def _command(self, *args: Any, **options: Any) -> Any:
        targeted = self._only is None or (args[0] == "EVALSHA" and args[1] == self._only)
        await self._maybe_fail(targeted)
        result = await self._execute_command(*args, **options)
        if targeted and self._lose_next > 0:
            self._lose_next -= 1
            self._count("failed")
            raise type(OUTAGE)("flaky: reply lost")
        self._count("passed")
        return result

    def _new_pipeline(self, *args: Any, **kwargs: Any) -> Pipeline:
        pipe = self._pipeline(*args, **kwargs)
        execute = pipe.execute

        async def flaky_execute(raise_on_error: bool = True) -> list[Any]:
            await self._maybe_fail(self._only is None)
            result = await execute(raise_on_error)
            self._count("passed")
            return result

        pipe.execute = flaky_execute  # type: ignore[method-assign]
        return pipe

    async def _maybe_fail(self, targeted: bool) -> None:
        self._count("started")
        if not targeted:
            return
        if self._stall:
            self._count("stalled")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self._count("failed")
                raise RedisConnectionError("flaky: cancelled inside a command") from None
        if self._down or self._fail_next > 0:
            self._fail_next = max(0, self._fail_next - 1)
            self._count("failed")
            raise type(self._error)(*self._error.args)  # a fresh one: no traceback piles up

    def _count(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        for waiter in [w for w in self._waiters if w[0] == kind and getattr(self, kind) >= w[1]]:
            self._waiters.remove(waiter)
            if not waiter[2].done():
                waiter[2].set_result(None)
