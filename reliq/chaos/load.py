"""The steady load of a chaos run: POST /task at a fixed rate, and the log of every 202.

Only a 202 puts a task in the log of accepted tasks; a request that failed (the API
was killed mid-request, Redis was down) is counted by reason and never retried, so the
audit holds reliq to exactly what it promised.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from reliq.chaos import tasks as t

#: Retries a ``fail`` task gets: it must run exactly this many times plus one, then be dead.
FAIL_RETRIES = 1


@dataclass(frozen=True, slots=True)
class Accepted:
    """A task the API answered 202 for, and the final state it must reach."""

    id: str
    type: str
    at: float  # unix seconds of the 202
    expect: str  # succeeded | dead:error | dead:crashed


EXPECT = {t.FAIL: "dead:error", t.POISON: "dead:crashed"}


class Load:
    """Sends tasks at ``rate`` per second to the API at ``url`` until stopped."""

    def __init__(self, url: str, rng: random.Random, rate: float, log_path: Path, max_in_flight: int = 64) -> None:
        self.url = url
        self.rng = rng
        self.rate = rate
        self.log_path = log_path
        self.accepted: dict[str, Accepted] = {}
        self.refused: Counter[str] = Counter()
        self.sent = 0
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._log = log_path.open("ab")
        self._session: aiohttp.ClientSession | None = None

    def _next(self) -> dict[str, Any]:
        """The next task of the mix: mostly quick ones, some slow (some of them keyed), some failing."""
        r = self.rng.random()
        if r < 0.4:
            return {"type": t.NOOP, "payload": {"n": self.sent}}
        if r < 0.6:
            return {"type": t.SLEEP, "payload": {"s": round(self.rng.uniform(0.01, 0.4), 3)}}
        if r < 0.7:  # with one of 8 keys, two of a key at once: slots a kill must give back
            return {"type": t.KEYED, "payload": {"s": round(self.rng.uniform(0.01, 0.4), 3)},
                    "key": f"k{self.rng.randrange(8)}"}
        if r < 0.9:
            return {"type": t.FLAKY, "payload": {"fails": self.rng.randint(1, 2)}}
        return {"type": t.FAIL, "payload": {"n": self.sent}, "max_retries": FAIL_RETRIES}

    async def submit(self, body: dict[str, Any]) -> str | None:
        """POST one task; return its id on a 202 (logged as accepted), None otherwise."""
        assert self._session is not None, "submit() is only valid while run() is running"
        self.sent += 1
        try:
            async with self._session.post(self.url + "/task", json=body) as resp:
                data = await resp.read()
                if resp.status != 202:
                    self.refused[f"HTTP {resp.status}"] += 1
                    return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.refused[type(exc).__name__] += 1
            return None
        task_id = str(orjson.loads(data)["task_id"])
        a = Accepted(task_id, body["type"], time.time(), EXPECT.get(body["type"], "succeeded"))
        self.accepted[task_id] = a
        self._log.write(orjson.dumps({"id": a.id, "type": a.type, "at": a.at, "expect": a.expect}) + b"\n")
        self._log.flush()
        return task_id

    async def submit_fault(self, type: str, payload: Any) -> str | None:
        """Enqueue one task that is a fault (the poison pill, a loop blocker)."""
        return await self.submit({"type": type, "payload": payload})

    async def _one(self, body: dict[str, Any]) -> None:
        try:
            await self.submit(body)
        finally:
            self._slots.release()

    async def run(self) -> None:
        """Send at the steady rate until :meth:`stop`; wait for requests in flight."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as self._session:
            start = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            n = 0
            while not self._stop.is_set():
                n += 1
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                await self._slots.acquire()
                task = asyncio.create_task(self._one(self._next()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        self._log.close()

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
