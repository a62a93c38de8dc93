"""The pure half of the producer's script calls: the KEYS and ARGV each takes, and what its reply means.

``Queue`` (asyncio, ``queue.py``) and ``SyncQueue`` (blocking, ``syncqueue.py``) do only
the I/O and call these for everything else, so the two clients cannot drift apart in
what they send or how they read the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import OutOfMemoryError, ResponseError

from reliq import priorities
from reliq.errors import RedisFull, script_error
from reliq.formats import CancelMode, Code, Enqueued, RecordFormat, Unique, make_body, opts_prefix
from reliq.keys import QueueKeys
from reliq.memory import REFUSED_MEMORY
from reliq.settings import Settings

if TYPE_CHECKING:
    from reliq.queue import TaskSpec


def group_keys(k: QueueKeys) -> list[str]:
    """The keys of keyed tasks a script that moves them takes, in this order (_lib.lua: G)."""
    return [k.groups, k.group_prefix, k.ring, k.key_holds]


def enqueue_keys(k: QueueKeys) -> list[str]:
    """KEYS of enqueue.lua (the types hash: the types' defaults, reliq/type_defaults.py; then priorities, unique
    locks, keys)."""
    return [k.pending, k.delayed, k.stats, k.task_prefix, k.idem_prefix, k.types, k.priority_prefix, k.priorities,
            k.unique_prefix, *group_keys(k)]


def enqueue_batch(specs: Sequence[TaskSpec], default_retries: int) -> bytes:
    """The tasks as enqueue.lua's one JSON argument (ARGV[2]), numbers as strings.

    One flat array, :data:`~reliq.formats.ENQUEUE_FIELDS` a task one after another: an
    array a task cost the script's cjson twice as much (callgrind, ~6,000 instructions a
    task). The body is built here (its max_retries the task's, else ``default_retries``,
    the queue's, which the type's default may replace); a task that sets nothing more
    sends '' for the rest, so that the script reads 4 values of it, not 11.
    """
    return orjson.dumps([
        value for s in specs
        for value in (s.id, s.type, make_body(opts_prefix(default_retries if s.max_retries is None else s.max_retries,
                                                          s.timeout_ms, s.trace), s.payload).decode(), _rest(s))
    ])


def _rest(s: TaskSpec) -> str | list[str]:
    """A task's ENQUEUE_REST ('' when it sets none of it)."""
    unique = _unique(s)
    if (s.max_retries is None and not s.delay_ms and not s.idempotency_key and not s.run_at_ms
            and unique == _TYPE_DEFAULT and not s.key and s.priority == priorities.DEFAULT):
        return ""
    return ["" if s.max_retries is None else "1", str(s.delay_ms), s.idempotency_key, str(s.run_at_ms), unique, s.key,
            "" if s.priority == priorities.DEFAULT else str(s.priority)]


# Plain strs, bound once: _unique runs a task, and a member looked up on its enum costs ~0.25 us.
_BY_KEY, _TYPE_DEFAULT, _BY_PAYLOAD, _NOT_UNIQUE = (Unique.KEY.value, Unique.TYPE_DEFAULT.value, Unique.PAYLOAD.value,
                                                    Unique.NO.value)


def _unique(spec: TaskSpec) -> str:
    """How enqueue.lua takes a task's uniqueness: '' the type's default, '-' no, '#' the default key, '=key'."""
    if spec.unique_key:
        return _BY_KEY + spec.unique_key
    if spec.unique is None:
        return _TYPE_DEFAULT
    return _BY_PAYLOAD if spec.unique else _NOT_UNIQUE


#: The worker info field (heartbeat.lua) in which a worker says the newest record format it reads.
SPEAKS = "records"


def records_call(k: QueueKeys, upgrade: RecordFormat | None = None,
                 new_as: RecordFormat | None = None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of records.lua: decide (or read) the queue's record format, or set it (``upgrade``,
    refused while a registered worker does not read it); ``new_as``: the format it takes if it is new (None: 2)."""
    return ([k.format, k.stats, k.workers, k.pending, k.delayed, k.dead, k.worker_info_prefix],
            ["" if upgrade is None else int(upgrade), "" if new_as is None else int(new_as), SPEAKS])


def enqueue_args(settings: Settings, batch: bytes, record_format: RecordFormat | None) -> list[Any]:
    """ARGV of enqueue.lua: idempotency TTL (ms), the batch, the admission limit, the record format to write
    (None, not read yet: format 1, which every version reads)."""
    return [int(settings.idempotency_ttl * 1000), batch, settings.max_pending,
            int(record_format or RecordFormat.FIELDS)]


def enqueued(raw: Sequence[Any], specs: Sequence[TaskSpec], queue: str,
             settings: Settings) -> list[tuple[str, Enqueued]]:
    """enqueue.lua's reply as (the task id that stands for it, what became of it) for each of ``specs``.

    Raises QueueFull when the script refused the call.
    """
    if raw[0] != Code.OK:
        raise script_error(raw[0], queue=queue, pending=int(raw[1]), limit=settings.max_pending)
    out = [(s.id, Enqueued.CREATED) for s in specs]
    for i in range(1, len(raw), 3):  # the tasks not created now: place, id, what
        out[int(raw[i]) - 1] = (text(raw[i + 1]), Enqueued(raw[i + 2]))
    return out


def refused(exc: ResponseError, queue: str) -> RedisFull | None:
    """The refusal that an error of enqueue.lua stands for, or None when it is another error.

    OOM: enqueue.lua is not allow-oom, so a Redis at its maxmemory refuses its first
    write and nothing was written.
    """
    return RedisFull(queue) if isinstance(exc, OutOfMemoryError) else None


def count_refused(k: QueueKeys, n: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of count.lua adding ``n`` to the refused_memory counter (it runs on a full Redis)."""
    return [k.stats], [REFUSED_MEMORY, n]


def cancel_keys(k: QueueKeys) -> list[str]:
    """KEYS of cancel.lua (waiters and wake-ups: to wake whoever waits; held, priorities, limited, keys: where a
    pending task may wait; the workers' cancel-request sets and channels: a running task's worker is asked to
    stop it)."""
    return [k.pending, k.delayed, k.stats, k.task_prefix, k.waiters, k.wake_prefix, k.idem_prefix, k.held_prefix,
            k.priority_prefix, k.cancels_prefix, k.cancel_channel_prefix, k.unique_prefix, k.limited_prefix,
            *group_keys(k)]


def cancel_args(task_id: str, settings: Settings, forget: bool = False) -> list[Any]:
    """ARGV of cancel.lua: the id, how long the cancelled record is kept (ms), or that it goes at once."""
    return [task_id, int(settings.result_ttl * 1000), CancelMode.FORGET if forget else CancelMode.KEEP]


def cancelled(task_id: str, raw: Sequence[Any]) -> str:
    """cancel.lua's reply as the state the task was in; raise when there was nothing to cancel.

    ``processing`` (Code.CANCELLING): the task is running, and its worker was asked to stop
    it; it ends ``cancelled`` once the worker has (or ``succeeded``, had it finished first).
    """
    code, state = raw
    if code not in (Code.OK, Code.CANCELLING):
        raise script_error(code, task_id=task_id, state=text(state))
    return text(state)


def watch_keys(k: QueueKeys, task_id: str) -> list[str]:
    """KEYS of watch.lua: the task's hash and the queue's waiters hash."""
    return [k.task(task_id), k.waiters]


def watch_args(task_id: str, hub: str, ttl_ms: int) -> list[Any]:
    """ARGV of watch.lua: the id, the waiting hub, the TTL of the waiters hash (ms)."""
    return [task_id, hub, ttl_ms]


def unwatch_keys(k: QueueKeys) -> list[str]:
    """KEYS of unwatch.lua."""
    return [k.waiters]


def text(value: bytes | str | Any) -> str:
    """A Redis reply as text (replies are bytes; typing allows str too)."""
    return value.decode() if isinstance(value, bytes) else str(value)
