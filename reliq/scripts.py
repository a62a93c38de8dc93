"""The Lua scripts, loaded from ``reliq/lua/`` and registered once per Redis client.

Each transition of the state machine is one file; ``_lib.lua`` is prepended to each so
shared helpers exist once. redis-py's ``Script`` calls by SHA and reloads on NOSCRIPT
(after a Redis restart), so a restarted server needs no special handling.

A script whose file starts with a Redis 7 shebang (``#!lua flags=allow-oom``) keeps it as
its first line, before the helpers: that is where Redis looks for it (EVALSHA of the
loaded text honours the flags). The scripts that drain a queue carry ``allow-oom`` so a
Redis at its maxmemory can still be emptied; enqueue does not, so it is refused there.
Redis 6 knows no shebang and fails to compile one: then the scripts are loaded again
without it (they then run as on Redis 6: a full Redis refuses their first write).

A line ``--- @format NAME`` in a script is replaced by the Lua locals of that format,
generated from :mod:`reliq.formats`, where Python reads and writes it too.
"""

from __future__ import annotations

import hashlib
import logging
import re
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.cluster
from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, ResponseError

from reliq import formats

log = logging.getLogger(__name__)

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
    "count",
    "watch",
    "unwatch",
    "trim",
    "pause",
    "resume",
    "limit",
    "schedule_put",
    "schedule_remove",
    "schedule_pause",
    "schedule_fire",
    "schedule_enqueued",
    "schedules",
    "types",
    "browse",
    "progress",
    "partition_map",
    "records",
)


@cache
def source(name: str, shebang: bool = True) -> str:
    """The full text of script ``name``: its shebang line if any, the shared helpers, the script.

    ``shebang=False`` leaves the shebang out (for Redis 6).
    """
    lua = resources.files("reliq") / "lua"
    first, body = _split_shebang((lua / f"{name}.lua").read_text())
    return (first if shebang else "") + _with_formats(_needed((lua / "_lib.lua").read_text(), body) + "\n" + body)


_WORD = re.compile(r"\w+")
_DEFINES = re.compile(r"^local\s+(?:function\s+(\w+)|([\w\s,]+?)\s*=)")


def _needed(lib: str, body: str) -> str:
    """The shared helpers ``body`` uses, directly or through each other: the rest of ``lib`` left out.

    A script runs its helpers' definitions at every call: all of them cost ~30,000
    instructions a call, where a script needs a few (callgrind).
    """
    pieces = _pieces(lib)
    wanted = set(_WORD.findall(_COMMENT.sub("", body)))
    keep = [not names for names, _ in pieces]
    grew = True
    while grew:
        grew = False
        for n, (names, text) in enumerate(pieces):
            if not keep[n] and names & wanted:
                keep[n] = grew = True
                wanted |= set(_WORD.findall(_COMMENT.sub("", "\n".join(text))))
    return "\n".join(line for n, (_, text) in enumerate(pieces) if keep[n] for line in text)


def _pieces(lib: str) -> list[tuple[set[str], list[str]]]:
    """``lib`` as (the names a piece defines, its lines): each top-level ``local`` (a function to
    its ``end`` at the line's start, or a value to where its brackets close) with the comment
    lines above it; what is not one (blank lines, ``--- @format`` lines) is a piece defining
    nothing, always kept."""
    pieces: list[tuple[set[str], list[str]]] = []
    lines, comments = lib.splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DEFINES.match(line)
        if not m:
            if line.startswith("--") and not line.startswith("--- @format"):
                comments.append(line)
            else:
                pieces.append((set(), [*comments, line]))
                comments = []
            i += 1
            continue
        end = _end_of(lines, i, function=bool(m.group(1)))
        names = {m.group(1)} if m.group(1) else {n.strip() for n in m.group(2).split(",")}
        pieces.append((names, [*comments, *lines[i:end + 1]]))
        comments = []
        i = end + 1
    pieces.append((set(), comments))
    return pieces


def _end_of(lines: list[str], start: int, function: bool) -> int:
    """The last line of the top-level definition that starts at ``lines[start]``."""
    end, depth = start, 0
    while True:
        if function:
            if lines[end] == "end":
                return end
        else:
            code = _COMMENT.sub("", lines[end])
            depth += code.count("{") + code.count("(") - code.count("}") - code.count(")")
            if depth <= 0:
                return end
        end += 1


_FORMAT = re.compile(r"^--- @format (\w+)\n", re.MULTILINE)
_COMMENT = re.compile(r"--.*$", re.MULTILINE)
_LOCALS = re.compile(r"^\s*local\s+(?:function\s+)?([\w\s,]+?)\s*(?:=|\(|$)", re.MULTILINE)


def _with_formats(text: str) -> str:
    """``text`` with each ``--- @format NAME`` line replaced by that format's Lua locals.

    Raises ValueError for a format :mod:`reliq.formats` does not define, and for a local
    the script declares again (Lua would let the second hide the first).
    """
    def expand(m: re.Match[str]) -> str:
        if m.group(1) not in formats.LUA:
            raise ValueError(f"no format {m.group(1)!r} in reliq/formats.py (LUA)")
        # Only the names the script's code reads: each costs a little every call.
        return formats.lua_locals(m.group(1), used)

    code = _COMMENT.sub("", text)
    used = set(re.findall(r"\w+", code))
    out = _FORMAT.sub(expand, text)
    declared = [n.strip() for names in _LOCALS.findall(out) for n in names.split(",")]
    if twice := sorted({n for n in declared if n.isupper() and declared.count(n) > 1}):
        raise ValueError(f"a script declares {', '.join(twice)} twice (one from reliq/formats.py?)")
    return out


def _split_shebang(text: str) -> tuple[str, str]:
    if not text.startswith("#!"):
        return "", text
    line, _, rest = text.partition("\n")
    return line + "\n", rest


def has_shebang(name: str) -> bool:
    """Whether script ``name`` carries Redis 7 flags."""
    return source(name) != source(name, shebang=False)


#: Whether a Redis refused a shebang already (then every client loads scripts without one).
_no_shebang = False


def refused_shebang(name: str, exc: ResponseError) -> bool:
    """Whether ``exc`` is Redis < 7 failing to compile script ``name``'s shebang line."""
    return has_shebang(name) and "near '#'" in str(exc)


def note_no_shebang() -> None:
    """A Redis refused a shebang: from now on every client of this process loads the scripts without."""
    global _no_shebang
    if not _no_shebang:
        log.warning("this Redis does not understand script flags (Redis < 7): reliq's scripts run "
                    "without allow-oom, so workers cannot drain a Redis at its maxmemory; use Redis >= 7")
        _no_shebang = True


def loaded(name: str) -> str:
    """The text of script ``name`` that clients load now: without its shebang once a Redis refused one."""
    return source(name, shebang=not _no_shebang)


def loaded_sha(name: str) -> str:
    """The SHA1 of :func:`loaded`, which EVALSHA calls it by."""
    return sha(name, shebang=not _no_shebang)


@cache
def sha(name: str, shebang: bool = True) -> str:
    """The SHA1 that EVALSHA calls script ``name`` by (``shebang=False``: its Redis 6 text's)."""
    return hashlib.sha1(source(name, shebang).encode()).hexdigest()


class Scripts:
    """The registered scripts of one Redis client, as awaitable callables."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(loaded(name)) for name in NAMES
        }

    async def __call__(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run script ``name`` with ``keys`` and ``args`` (EVALSHA, loading it if needed).

        With ``client`` a pipeline, the call is queued on it instead.
        """
        try:
            return await self._scripts[name](keys=keys, args=args, client=client)
        except ResponseError as exc:
            if client is not None or not refused_shebang(name, exc):
                raise
        note_no_shebang()
        self._scripts = {name: self._redis.register_script(loaded(name)) for name in NAMES}
        return await self._scripts[name](keys=keys, args=args)


class SyncScripts:
    """The blocking twin of :class:`Scripts`, for redis-py's sync client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(loaded(name)) for name in NAMES
        }

    def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` with ``keys`` and ``args`` (EVALSHA, loading it if needed)."""
        try:
            return self._run(self._scripts[name], keys, args)
        except ResponseError as exc:
            if not refused_shebang(name, exc):
                raise
        note_no_shebang()
        self._scripts = {name: self._client.register_script(loaded(name)) for name in NAMES}
        return self._run(self._scripts[name], keys, args)

    def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        if not isinstance(self._client, redis.cluster.RedisCluster):
            return script(keys=keys, args=args)
        # A script missing on a cluster is loaded on the primary of its keys only. redis-py's
        # Script loads it on every primary: from each heartbeat thread at once (one a shard),
        # more connections to every node than its pool allows, and waiting on any that stalls.
        try:
            return self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            node = self._client.get_node_from_key(keys[0])
            self._client.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
            return self._client.evalsha(script.sha, len(keys), *keys, *args)
