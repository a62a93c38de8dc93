"""What an idle worker waits on: one pub/sub connection a process (a shard), whatever the number of queues.

The scripts that make a queue's pending list non-empty publish on the queue's ready
channel (:attr:`reliq.queue.Queue.ready_channel`; ``_lib.lua``: ``ready_nudge``), and
only then: the first id into an empty list, from an enqueue, a promotion of retries and
scheduled tasks, a requeue from the dead letters, the reaper's or a release's return, a
crash suspect handed back, a paused type resumed, a key's marker back on the ring (a
paused queue resumed says ``resumed``). A busy queue's pushes publish nothing.

A worker process subscribes to the ready channels of all its queues, and to its cancel
channels (reliq/worker/cancels.py), on one connection: SSUBSCRIBE, on Redis 7, where the
scripts SPUBLISH, so that on a cluster a message stays on its queue's shard; there, one
connection a primary that serves any of the queues. Redis 6.2 has no sharded pub/sub:
there the scripts PUBLISH and the workers SUBSCRIBE (both decide by the server's version:
``_lib.lua`` by ``redis.REDIS_VERSION_NUM``, a Redis 7 field, and
:func:`reliq.connection.sharded_pubsub` by ``INFO``; tests/test_redis6.py). So a worker
holds the same few connections whether it serves one queue or five hundred.

No task is missed for a message missed, because of the order of things: the subscription
is in place (its confirmation noted every queue of it as woken) before the fetcher's
first claim; each later claim of a queue starts after its wake-up was taken, so a task
that arrives during the claim leaves a wake-up for the next round. A connection lost
loses the messages sent meanwhile: its new subscription's confirmation again notes every
queue of it as woken, so the worker claims from all of them at once; and the fetcher
claims from every queue once a second all the same (the fallback, for a message lost
otherwise, or never sent by an older reliq's producer). A cluster slot that moves away
unsubscribes its channel: the connections are then made anew from the new slot map.

Every idle worker of a queue is woken by its message, and one of them gets the task;
the others' claims find nothing (see docs/scaling.md for the cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.client import PubSub

from reliq.connection import pubsubs, sharded_pubsub
from reliq.loops import cancel_all
from reliq.outage import NEVER, Outage, reraise_if_cancelled
from reliq.queue import Queue, text

log = logging.getLogger(__name__)

#: What a ``ready_nudge`` of a whole queue's resume says (reliq/lua/resume.lua).
RESUMED = "resumed"


class Nudges:
    """The wake-ups of a worker's queues and the cancel nudges of its tasks, on one connection (a shard)."""

    def __init__(self, queues: list[Queue], worker_id: str, on_cancel: Callable[[str], None]) -> None:
        self.queues = queues
        #: ready channel -> queue name
        self.ready = {q.ready_channel: q.name for q in queues}
        self.cancel_channels = {q.cancel_channel(worker_id) for q in queues}
        self.on_cancel = on_cancel
        #: Names of the queues woken since the fetcher last took them, and of those resumed.
        self.woken: set[str] = set()
        self.resumed: set[str] = set()
        self._event = asyncio.Event()
        self._pending = 0  # connections not yet subscribed to all their channels
        #: Set once every channel is subscribed (and again after each new subscription).
        self.subscribed = asyncio.Event()

    def take(self) -> set[str]:
        """The queues woken since the last take (cleared)."""
        woken, self.woken = self.woken, set()
        self._event.clear()
        return woken

    async def wait(self, timeout: float) -> set[str]:
        """Up to ``timeout`` seconds for a queue to be woken; the queues woken (cleared), maybe none."""
        if not self.woken and timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._event.wait()
        return self.take()

    def _wake(self, names: set[str] | list[str]) -> None:
        self.woken.update(names)
        self._event.set()

    async def run(self) -> None:
        """Listen until cancelled; after an outage or a moved slot, subscribe anew (every queue woken)."""
        outage = Outage("wake-up listener", log, give_up=NEVER)
        while True:
            connections: list[PubSub] = []
            listeners: list[asyncio.Task[str]] = []
            client = self.queues[0].redis
            try:
                sharded = await sharded_pubsub(client)
                groups = await pubsubs(client, sorted(self.ready))
                connections = [pubsub for pubsub, _ in groups]
                # Python 3.11's asyncio.wait_for (redis-py's, around each write) returns the
                # result of a call that completed as a cancel came, and the cancel is lost: the
                # listener would then wait on connections nobody closes (a worker stopped just
                # after starting; "unclosed connection" once the loop is gone).
                reraise_if_cancelled()
                self._pending = len(groups)
                listeners = [asyncio.create_task(self._listen(pubsub, channels, sharded,
                                                              self.cancel_channels if i == 0 else set()))
                             for i, (pubsub, channels) in enumerate(groups)]
                done, _ = await asyncio.wait(listeners, return_when=asyncio.FIRST_COMPLETED)
                why = done.pop().result()  # raises the listener's error
                outage.answered()
                log.info("wake-up listener: %s; subscribing again", why)
                delay = 0.0
            except Exception as exc:  # Redis gone, mostly (UNAVAILABLE); whatever it is, never the end of it
                reraise_if_cancelled()
                delay = outage.failed(exc, "idle workers claim from their queues every second meanwhile")
            finally:
                self.subscribed.clear()
                self._wake(list(self.ready.values()))  # what was sent while nobody listened
                await _uninterrupted(self._close(client, listeners, connections))
            await asyncio.sleep(delay)

    async def _close(self, client: object, listeners: list[asyncio.Task[str]], connections: list[PubSub]) -> None:
        await cancel_all(listeners)
        for listener in listeners:  # its error, if any, was the outage just logged
            if not listener.cancelled():
                listener.exception()
        for pubsub in connections:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # (redis-py leaves it untyped)
            if pubsub.connection_pool is not getattr(client, "connection_pool", None):
                with contextlib.suppress(Exception):
                    await pubsub.connection_pool.disconnect()  # a cluster node's, ours alone

    async def _listen(self, pubsub: PubSub, channels: list[str], sharded: bool, cancels: set[str]) -> str:
        """Subscribe ``pubsub`` to ``channels`` (and ``cancels``) and dispatch its messages.

        Returns why it stopped listening (a slot moved away); raises when the connection is lost.
        """
        if cancels:
            await pubsub.subscribe(*sorted(cancels))
        for channel in channels:  # one a command: on a cluster one command's channels share a slot
            await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))
        waiting = len(channels) + len(cancels)
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind, channel = message["type"], text(message["channel"])
            if kind in ("smessage", "message"):
                self._message(channel, text(message["data"]), cancels)
            elif kind in ("ssubscribe", "subscribe"):
                waiting -= 1
                self._subscribed(channel, last=waiting == 0)
            elif kind == "sunsubscribe":  # the channel's slot moved to another shard (a cluster reshard)
                return f"channel {channel} moved to another shard"

    def _subscribed(self, channel: str, last: bool) -> None:
        # Subscribed (at first, or again after redis-py reconnected): whatever was published
        # before is unknown, so the queue is claimed from at once.
        if channel in self.ready:
            self._wake([self.ready[channel]])
        if last:  # this connection's last channel: once every connection's is, say so
            self._pending -= 1
            if self._pending == 0:
                self.subscribed.set()

    def _message(self, channel: str, data: str, cancels: set[str]) -> None:
        name = self.ready.get(channel)
        if name is not None:
            if data == RESUMED:
                self.resumed.add(name)
            self._wake([name])
        elif channel in cancels:
            self.on_cancel(data)


async def _uninterrupted(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if cancelled meanwhile (cancel_all cancels again and
    again: a cleanup cut short would leave connections open), then let the cancel through."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
