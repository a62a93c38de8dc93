"""Small helpers for tests: wait for a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestClient, TestServer

from reliq import api
from reliq.formats import payload_of
from reliq.queue import Queue
from reliq.settings import Settings


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     interval: float = 0.01, what: str = "condition") -> None:
    """Poll ``condition`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(interval)


async def held_by(queue: Queue, worker_id: str) -> str:
    """A task that ``worker_id`` has claimed and is running (it beat just now)."""
    task_id = await queue.enqueue("noop")
    await queue.heartbeat(worker_id, {"pid": 1}, ttl_s=60)
    claimed, _ = await queue.claim(worker_id, 1)
    assert [t.id for t in claimed] == [task_id]
    return task_id


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> None:
    """Blocking twin of :func:`eventually`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


@asynccontextmanager
async def api_client(queue: Queue, settings: Settings) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    """The producer API app for ``queue``, served on a free port, with a client for it."""
    client = TestClient(TestServer(api.create_app(queue, settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def move_in(queue: Queue, worker_id: str) -> str | None:
    """Move the id at the taking end of ``pending`` into the worker's list, as a worker's
    own lost reply or a BLMOVE of an older reliq leaves one: claim.lua takes such an id
    (``moved``), and the orphan adoption hands it the ids of a worker's list."""
    k = queue.keys
    moved = await queue.redis.lmove(k.pending, k.processing(worker_id), "RIGHT", "LEFT")
    return None if moved is None else moved.decode()


@asynccontextmanager
async def ready_nudges(queue: Queue) -> AsyncIterator[Callable[[float], Awaitable[list[str]]]]:
    """Listen on the queue's ready channel (reliq/worker/nudges.py); yield a function that
    returns the nudges heard within a given number of seconds."""
    pubsub = queue.redis.pubsub()
    await pubsub.ssubscribe(queue.ready_channel)
    assert (await pubsub.get_message(timeout=5))["type"] == "ssubscribe"

    async def heard(within: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "smessage":
                got.append(message["data"].decode())
        return got

    try:
        yield heard
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def stored_payload(fields: dict[bytes, bytes]) -> bytes | None:
    """The payload a task's record holds, of either record format (formats.payload_of), from its
    HGETALL as redis-py returns it (bytes); None once dropped (a success) or when there is none."""
    return payload_of({k.decode(): v for k, v in fields.items()})[0]


def payload_text(record: dict[str, str] | dict[str, bytes]) -> str | None:
    """The payload (JSON text) of a task's record as read, text or bytes, of either record format
    (formats.payload_of: format 2 holds it at the end of ``body``); None when it has none."""
    payload, _ = payload_of({k: v.encode() if isinstance(v, str) else v for k, v in record.items()})
    return None if payload is None else payload.decode()
