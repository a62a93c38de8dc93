"""Every Redis key reliq uses is named here and nowhere else.

All keys of one queue share the hash tag ``{queue}``, so every script touches a
single hash slot and runs unchanged on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from reliq.priorities import DEFAULT as DEFAULT_PRIORITY

PREFIX = "reliq"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The key names of one queue."""

    queue: str

    @property
    def base(self) -> str:
        """``reliq:{queue}:`` — the common prefix with the hash tag."""
        return f"{PREFIX}:{{{self.queue}}}:"

    @property
    def partitions(self) -> str:
        """STRING, JSON: the partition map of a partitioned queue (reliq/partitions.py).

        Written once by the first role started with ``--partitions N`` (N > 1), changed only
        by ``reliq partitions set``; absent for a queue of one partition (the default), which
        keeps today's keys and pays nothing for the feature but one GET now and then.
        """
        return self.base + "partitions"

    @property
    def format(self) -> str:
        """STRING: the record format the queue's producers write, '1' or '2' (formats.RecordFormat).

        Decided once, by the first role of a version that knows formats to use the queue:
        '2' for a new queue, '1' for one that already holds anything (workers of the version
        before may serve it); ``reliq records upgrade`` turns '1' into '2' (docs/architecture.md:
        "Record formats across an upgrade"). Producers read it with the partition map, every
        few seconds, and tell enqueue.lua which to write.
        """
        return self.base + "format"

    @property
    def pending(self) -> str:
        """LIST of ready task ids; producers LPUSH, workers take from the right."""
        return self.base + "pending"

    @property
    def ready_channel(self) -> str:
        """Pub/sub CHANNEL (not a key) the scripts nudge idle workers on when ``pending`` gets its first id.

        Named like the list (channels are not keys): it carries the queue's hash tag, so a
        script's SPUBLISH on it stays on the queue's shard of a cluster (reliq/worker/nudges.py).
        """
        return self.pending

    @property
    def priority_prefix(self) -> str:
        """Prefix of the pending lists of the priorities other than the default; scripts append the priority."""
        return self.base + "pending:"

    @property
    def priorities(self) -> str:
        """STRING that exists while a list of ``priority_prefix`` may hold ids (reliq/priorities.py).

        Set by the script that creates such a list, deleted by a claim that finds them all
        empty: so a queue that never uses priorities has no such key, and the claim script
        pays one EXISTS a call for the feature (shared with the pause check).
        """
        return self.base + "priorities"

    def priority_list(self, priority: int) -> str:
        """LIST of ready ids of ``priority`` (reliq/priorities.py): ``pending`` itself for the default."""
        return self.pending if priority == DEFAULT_PRIORITY else self.priority_prefix + str(priority)

    @property
    def delayed(self) -> str:
        """ZSET id -> due time (ms): retries waiting out their backoff, scheduled tasks."""
        return self.base + "delayed"

    @property
    def dead(self) -> str:
        """LIST of dead-lettered ids, newest at the left."""
        return self.base + "dead"

    @property
    def dead_archive(self) -> str:
        """STREAM of dead tasks evicted past the dead-letter cap (whole records), capped itself."""
        return self.base + "dead-archive"

    @property
    def succeeded(self) -> str:
        """LIST of the ids of kept succeeded records, newest at the left (retention, settle.lua)."""
        return self.base + "succeeded"

    @property
    def succeeded_prefix(self) -> str:
        """Prefix of the per-type succeeded lists of types with a retention of their own."""
        return self.base + "succeeded:"

    @property
    def workers(self) -> str:
        """ZSET worker id -> last heartbeat (ms, Redis server time)."""
        return self.base + "workers"

    @property
    def stats(self) -> str:
        """HASH of monotonic counters (enqueued, succeeded, failed, ...)."""
        return self.base + "stats"

    @property
    def metrics(self) -> str:
        """HASH of per-type counters and histogram buckets, written by the settle script."""
        return self.base + "metrics"

    @property
    def reaper_lock(self) -> str:
        """STRING lock so that one reaper at a time scans for dead workers."""
        return self.base + "reaper-lock"

    @property
    def reaper_clock(self) -> str:
        """HASH: when a reaper round last reached Redis, and the grace after an outage (ms)."""
        return self.base + "reaper-clock"

    @property
    def task_prefix(self) -> str:
        """Prefix of task hashes; scripts append the id (ids are data, not known up front)."""
        return self.base + "task:"

    @property
    def idem_prefix(self) -> str:
        """Prefix of idempotency-key strings (key -> task id)."""
        return self.base + "idem:"

    @property
    def waiters(self) -> str:
        """HASH task id -> the hubs (space-separated) waiting for it to end; only while someone waits.

        It expires as a whole a minute after the last wait began (waiters re-mark every few
        seconds), so a queue nobody waits on has no such key, and the end-state scripts pay
        one EXISTS a call for the feature.
        """
        return self.base + "waiters"

    @property
    def wake_prefix(self) -> str:
        """Prefix of the hubs' wake-up lists; scripts append the hub named in ``waiters``."""
        return self.base + "wake:"

    def wake(self, hub: str) -> str:
        """LIST of ids of waited-for tasks that ended, for the waiters of one hub (a process or a call)."""
        return self.wake_prefix + hub

    def task(self, task_id: str) -> str:
        """HASH holding one task's type, payload, state, attempts, timestamps and errors."""
        return self.task_prefix + task_id

    def idem(self, key: str) -> str:
        """STRING mapping an Idempotency-Key to the task id it created."""
        return self.idem_prefix + key

    @property
    def paused(self) -> str:
        """HASH of pauses: field ``*`` (the whole queue) or a task type -> ``paused|since_ms|by``.

        ``resuming|since_ms|by`` while a type's held tasks go back to pending (reliq/pausing.py).
        Absent when nothing is paused, so the claim script pays one EXISTS a call for the feature.
        """
        return self.base + "paused"

    @property
    def unique_prefix(self) -> str:
        """Prefix of unique locks (STRING -> the id of the live task holding it).

        ``enqueue.lua`` appends the lock's name, ``<len(type)>:<type>:<key>``, and stores
        it in the task's record (field ``unique``); the scripts that end the task free it.
        """
        return self.base + "unique:"

    @property
    def types(self) -> str:
        """HASH task type -> JSON of the defaults its enqueues take (reliq/type_defaults.py).

        Written by the workers serving the type when they start; absent while no type has
        any, so the enqueue script pays one EXISTS a call for the feature.
        """
        return self.base + "types"

    @property
    def held_prefix(self) -> str:
        """Prefix of the per-type held lists; scripts append the task type."""
        return self.base + "held:"

    def held(self, task_type: str) -> str:
        """LIST of pending ids of a paused type, set aside by claims (newest at the left, like pending)."""
        return self.held_prefix + task_type

    # -- flow control (reliq/limits.py, docs/flow-control.md) ------------------------------

    @property
    def limits(self) -> str:
        """HASH task type -> its merged limits ``count|period_ms|burst|key_concurrency|ordered`` (limit.lua).

        Absent when no type of the queue has a limit, so a claim pays nothing for them.
        """
        return self.base + "limits"

    @property
    def limit_sources(self) -> str:
        """HASH task type -> JSON ``{"declared": layer, "set": layer}``: where its limits come from."""
        return self.base + "limit-sources"

    @property
    def tat(self) -> str:
        """HASH task type -> the theoretical arrival time of its next task (ms, GCRA): its rate limit's state."""
        return self.base + "tat"

    @property
    def limited_due(self) -> str:
        """ZSET task type -> when its set-aside tasks are due (its next token, or the end of a hold; ms).

        A type is in it while its ``limited`` list holds anything; absent when none is.
        """
        return self.base + "limited-due"

    @property
    def limited_prefix(self) -> str:
        """Prefix of the per-type limited lists; scripts append the task type."""
        return self.base + "limited:"

    def limited(self, task_type: str) -> str:
        """LIST of ids (and key markers) of a type set aside until its next token is due (newest at the left)."""
        return self.limited_prefix + task_type

    @property
    def groups(self) -> str:
        """HASH of the keys' state: ``a:<gid>`` tasks running (slots taken), ``q:<gid>`` has a marker,
        ``h:<gid>`` held until (ms), and the counts ``ready``, ``aside`` and ``tokens`` (claim.lua)."""
        return self.base + "groups"

    @property
    def group_prefix(self) -> str:
        """Prefix of the per-key lists; scripts append the group id (``<len(type)>:<type>:<key>``)."""
        return self.base + "group:"

    def group(self, task_type: str, key: str) -> str:
        """LIST of the pending ids of one key of one type, newest at the left."""
        return self.group_prefix + group_id(task_type, key)

    @property
    def ring(self) -> str:
        """LIST of the markers (``@<gid>``) of keys with ready tasks and (likely) a free slot: claims rotate it."""
        return self.base + "ring"

    @property
    def key_holds(self) -> str:
        """ZSET group id -> when its hold ends (ms): keys a handler's ``RateLimited`` held."""
        return self.base + "key-holds"

    @property
    def schedules(self) -> str:
        """SET of the names of the queue's periodic schedules (reliq/schedules.py)."""
        return self.base + "schedules"

    @property
    def schedule_prefix(self) -> str:
        """Prefix of the schedules' hashes; scripts append the name."""
        return self.base + "schedule:"

    def schedule(self, name: str) -> str:
        """HASH of one schedule: its definition (``def``), cursor (``upto``), pause, last run and counts."""
        return self.schedule_prefix + name

    @property
    def processing_prefix(self) -> str:
        """Prefix of the workers' processing lists; the snapshot script appends worker ids."""
        return self.base + "processing:"

    def processing(self, worker_id: str) -> str:
        """LIST of ids worker process ``worker_id`` holds right now."""
        return self.processing_prefix + worker_id

    @property
    def cancels_prefix(self) -> str:
        """Prefix of the workers' cancel-request sets; scripts append the worker id."""
        return self.base + "cancels:"

    def cancels(self, worker_id: str) -> str:
        """SET of the ids worker ``worker_id`` holds whose cancel was asked for, until each has ended.

        The heartbeat's reply carries them, so a worker that missed the pub/sub nudge
        (:meth:`cancel_channel`) still learns of a cancel within one beat.
        """
        return self.cancels_prefix + worker_id

    @property
    def cancel_channel_prefix(self) -> str:
        """Prefix of the workers' cancel channels (pub/sub); scripts append the worker id."""
        return self.base + "cancel:"

    def cancel_channel(self, worker_id: str) -> str:
        """Pub/sub CHANNEL (not a key) on which cancel.lua nudges worker ``worker_id`` with a task id."""
        return self.cancel_channel_prefix + worker_id

    def worker_info(self, worker_id: str) -> str:
        """HASH describing a worker (host, pid, concurrency, in flight, processed)."""
        return self.worker_info_prefix + worker_id

    @property
    def worker_info_prefix(self) -> str:
        """Prefix of the workers' info hashes (+ worker id): :meth:`worker_info`."""
        return self.base + "worker:"



def group_id(task_type: str, key: str) -> str:
    """The id of one key of one type: ``<len(type)>:<type>:<key>``, unambiguous whatever the type holds.

    The length is in UTF-8 bytes, as Lua's ``#`` counts it.
    """
    return f"{len(task_type.encode())}:{task_type}:{key}"
