"""Handlers that are producers too: ``send_invoice.enqueue(payload)``, ``await send_invoice.aenqueue(payload)``.

``@reliq.task`` returns a :class:`TaskFunction`: calling it calls the handler exactly as
before (the worker calls the function itself), and ``enqueue``/``aenqueue`` put a task of
its type on a queue through a default client. It is typed, so mypy checks the payload
a producer passes against the handler's annotation of its first parameter.

The default clients are built on first use from ``reliq.configure(...)``, else from the
environment (``REDIS_URL``, ``RELIQ_QUEUE`` and the other ``RELIQ_*`` settings): one
blocking :class:`~reliq.Client` a process (fork-safe, so a module may enqueue at import
time before gunicorn forks), and one :class:`~reliq.AsyncClient` an event loop (asyncio
connections belong to the loop that opened them). Close the async one with
``await reliq.producer.aclose()`` before its loop ends.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, Unpack, cast

from reliq.client import AsyncClient, Client, EnqueueOptions
from reliq.settings import Settings, check_queue_name
from reliq.type_defaults import NONE, TypeDefaults

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class TaskFunction(Generic[T, P, R]):
    """A registered handler of task type ``name``: callable as the function, and a producer of its tasks."""

    def __init__(self, name: str, fn: Callable[Concatenate[T, P], R], defaults: TypeDefaults = NONE) -> None:
        self.name = name
        self.fn = fn
        #: The type's enqueue defaults, passed with every enqueue an option does not override.
        self.defaults = defaults
        functools.update_wrapper(self, fn)

    def __call__(self, payload: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the handler itself (no queue involved)."""
        return self.fn(payload, *args, **kwargs)

    def enqueue(self, payload: T, **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue a task of this type through the default :class:`~reliq.Client`; return its id.

        The options are :meth:`reliq.Client.enqueue`'s: ``queue``, ``max_retries``,
        ``delay``, ``run_at``, ``timeout``, ``idempotency_key``, ``priority``, ``unique``,
        ``unique_key``; the type's defaults (``@reliq.task(max_retries=..., unique=...)``)
        fill in those left out.
        """
        return default_client().enqueue(self.name, payload, **self._with_defaults(options))

    async def aenqueue(self, payload: T, **options: Unpack[EnqueueOptions]) -> str:
        """:meth:`enqueue` for asyncio code, through this loop's default :class:`~reliq.AsyncClient`."""
        return await default_async_client().enqueue(self.name, payload, **self._with_defaults(options))

    def _with_defaults(self, options: EnqueueOptions) -> EnqueueOptions:
        if not self.defaults:
            return options
        merged: dict[str, Any] = self.defaults.options()
        merged.update((k, v) for k, v in options.items() if v is not None)
        return cast(EnqueueOptions, merged)

    def __repr__(self) -> str:
        return f"<reliq task {self.name!r}: {self.fn!r}>"


class _Defaults:
    """The configuration and the clients built from it, renewed in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: Settings | None = None
        self.client: Client | None = None
        self.async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary())

    def resolved(self) -> Settings:
        if self.settings is None:
            self.settings = Settings.load()
        return self.settings


_defaults = _Defaults()


def _after_fork_in_child() -> None:
    # The lock may have been held by a parent thread (the child would wait for ever);
    # the Client is fork-safe and stays; asyncio clients belong to the parent's loops.
    global _defaults
    fresh = _Defaults()
    fresh.settings, fresh.client = _defaults.settings, _defaults.client
    _defaults = fresh


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(redis_url: str | None = None, queue: str | None = None, settings: Settings | None = None) -> None:
    """Set where ``TaskFunction.enqueue``/``aenqueue`` send tasks (instead of the environment).

    ``settings`` gives everything else a client uses (``max_retries``, ``max_pending``,
    ...); ``redis_url`` and ``queue`` win over it. The default clients built before are
    closed (the blocking one) or dropped (the async ones: close them with :func:`aclose`).
    """
    base = settings or Settings.load()
    changes: dict[str, Any] = {}
    if redis_url is not None:
        changes["redis_url"] = redis_url
    if queue is not None:
        changes["queue"] = check_queue_name(queue)
    with _defaults.lock:
        old = _defaults.client
        _defaults.settings = base.replace(**changes)
        _defaults.client = None
        _defaults.async_clients.clear()
    if old is not None:
        old.close()


def default_client() -> Client:
    """The blocking client ``enqueue`` uses, built on first use (one a process; it survives fork)."""
    client = _defaults.client
    if client is None:
        with _defaults.lock:
            if _defaults.client is None:
                s = _defaults.resolved()
                _defaults.client = Client(s.redis_url, s.queue, s)
            client = _defaults.client
    return client


def default_async_client() -> AsyncClient:
    """The running loop's asyncio client ``aenqueue`` uses, built on first use."""
    loop = asyncio.get_running_loop()
    client = _defaults.async_clients.get(loop)
    if client is None:
        with _defaults.lock:
            s = _defaults.resolved()
        client = _defaults.async_clients[loop] = AsyncClient(s.redis_url, s.queue, s)
    return client


def close() -> None:
    """Close the default blocking client of this process (a later ``enqueue`` opens a new one)."""
    with _defaults.lock:
        client, _defaults.client = _defaults.client, None
    if client is not None:
        client.close()


async def aclose() -> None:
    """Close the running loop's default asyncio client (a later ``aenqueue`` opens a new one)."""
    client = _defaults.async_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()
