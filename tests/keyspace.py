"""Read a queue's whole keyspace, to check a transition against every key it may touch."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from reliq.keys import QueueKeys
from reliq.queue import text

#: Hash fields holding times (ms); their values vary run to run, so they read as "T".
TIME_FIELDS = {"enqueued_at", "queued_at", "started_at", "finished_at", "last_seen", "cancel_requested_at",
               "progress_at"}


def masked_runs(raw: str) -> list[dict[str, Any]]:
    """A record's run history (field ``runs``, JSON) as a list, each entry's time masked as "T"."""
    return [{**entry, "at": "T"} for entry in orjson.loads(raw)]


def run(attempt: int, outcome: str, state: str, error: str = "boom", worker: str = "w1") -> dict[str, Any]:
    """One entry of a run history as :func:`masked_runs` reads it."""
    return {"attempt": attempt, "at": "T", "worker": worker, "outcome": outcome, "error": error, "state": state}


async def keyspace(redis: Redis, queue: str) -> dict[str, Any]:
    """Every key of ``queue`` (base prefix stripped) with its value, times masked."""
    base = QueueKeys(queue).base
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=base.replace("{", "\\{").replace("}", "\\}") + "*", count=1000):
        key = text(raw)
        kind = text(await redis.type(key))
        name = key[len(base):]
        if kind == "list":
            out[name] = [text(v) for v in await redis.lrange(key, 0, -1)]
        elif kind == "zset":
            out[name] = [text(v) for v in await redis.zrange(key, 0, -1)]
        elif kind == "hash":
            fields = {text(k): text(v) for k, v in (await redis.hgetall(key)).items()}
            out[name] = {k: ("T" if k in TIME_FIELDS else masked_runs(v) if k == "runs" else v)
                         for k, v in fields.items()}
        elif kind == "set":  # the workers' cancel requests: sorted, to compare
            out[name] = sorted(text(v) for v in await redis.smembers(key))
        elif kind == "stream":  # the dead-letter archive: its task ids, oldest first
            out[name] = [text(fields[b"task_id"]) for _, fields in await redis.xrange(key)]
        else:
            out[name] = text(await redis.get(key))
    return out
