"""The Lua scripts, loaded from ``reliq/lua/`` and registered once per Redis client.

Each transition of the state machine is one file; ``_lib.lua`` is prepended to each so
shared helpers exist once. redis-py's ``Script`` calls by SHA and reloads on NOSCRIPT
(after a Redis restart), so a restarted server needs no special handling.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script

NAMES = (
    "enqueue",
    "claim",
    "settle",
    "promote",
    "heartbeat",
    "reap_scan",
    "reap",
    "release",
    "dead_requeue",
    "dead_purge",
    "cancel",
    "snapshot",
    "dead_kinds",
    "dead_trim",
    "dead_edit",
    "dead_import",
)


@cache
def source(name: str) -> str:
    """The full text of script ``name``: the shared helpers, then the script itself."""
    lua = resources.files("reliq") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@cache
def sha(name: str) -> str:
    """The SHA1 that EVALSHA calls script ``name`` by."""
    return hashlib.sha1(source(name).encode()).hexdigest()


class Scripts:
    """The registered scripts of one Redis client, as awaitable callables."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in NAMES
        }

    async def __call__(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run script ``name`` with ``keys`` and ``args`` (EVALSHA, loading it if needed).

        With ``client`` a pipeline, the call is queued on it instead.
        """
        return await self._scripts[name](keys=keys, args=args, client=client)


class SyncScripts:
    """The blocking twin of :class:`Scripts`, for redis-py's sync client."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts: dict[str, Script] = {name: client.register_script(source(name)) for name in NAMES}

    def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` with ``keys`` and ``args`` (EVALSHA, loading it if needed)."""
        return self._scripts[name](keys=keys, args=args)
