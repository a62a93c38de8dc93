"""One settings object, built once: flags, then environment, then these defaults.

Every field can be set from the environment as ``RELIQ_<FIELD>`` (upper case), and the
Redis URL also as ``REDIS_URL``. Times are in seconds.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reliq.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: The most partitions a queue may have (reliq/partitions.py).
MAX_PARTITIONS = 256
#: What a producer may ask Redis to guarantee before the API answers 202.
DURABILITIES = ("memory", "replicated")


@dataclass(frozen=True)
class Settings:
    """Everything a reliq process can be told; see the field comments for meanings."""

    #: Where Redis is. ``redis_url_given`` is False when it came from the default, which
    #: lets ``reliq all`` start a private redis-server when nothing answers there.
    redis_url: str = DEFAULT_REDIS_URL
    redis_url_given: bool = False
    #: The queue this process serves (the ``{queue}`` hash tag of every key); for the API,
    #: the queue of tasks that name none.
    queue: str = "default"
    #: Queues a worker serves, ``NAME`` or ``NAME=WEIGHT`` (none: just ``queue``).
    queues: tuple[str, ...] = ()
    #: Serve ``queues`` in strict order of weight instead of weighted random.
    strict: bool = False
    #: Partitions of the queue(s) this process names (reliq/partitions.py): 0 = what Redis
    #: records (1 when nothing is); N = create them when none are recorded, refuse to
    #: start when another number is.
    partitions: int = 0

    #: Producer API and monitor listen addresses.
    host: str = "127.0.0.1"
    api_port: int = 8085
    monitor_port: int = 8082
    #: Largest request body the API reads, in bytes (413 beyond).
    max_body: int = 1024 * 1024
    #: Admission control: pending tasks past which POST /task answers 429 (0 = off).
    max_pending: int = 0
    #: Admission by memory: past this share of Redis's maxmemory (when one is set), new
    #: tasks are refused with 507, so workers keep headroom to drain (1 = only once Redis
    #: itself refuses writes).
    max_memory_ratio: float = 0.9
    #: Bearer token required by mutating endpoints when set (and, beyond loopback, by reads).
    api_token: str = ""
    #: Monitor: a second token that may only read (dashboards, scrapers); writes get 403.
    read_token: str = ""
    #: Listen on a non-loopback address without a token (refused otherwise).
    insecure: bool = False
    #: Default durability of POST /task: "memory" (Redis acknowledged) or "replicated"
    #: (WAIT for a replica, 503 if none confirms within replication_timeout seconds).
    durability: str = "memory"
    replication_timeout: float = 1.0
    #: Waits for tasks to end (GET /task/{id}?wait=, client.wait) one process serves at
    #: once; more get a 429. They share one blocking Redis connection a queue.
    max_waiters: int = 1000
    #: Monitor: require the token for read-only views too (the page itself stays open).
    #: Beyond loopback this is the default whenever a token is set; see ``public_read``.
    private: bool = False
    #: Monitor beyond loopback: let anyone read (stats, dead letters, events) without a token.
    public_read: bool = False
    #: Monitor: serve GET /metrics without a token (for a Prometheus that cannot send one).
    public_metrics: bool = False

    #: Tasks one worker process runs at once.
    concurrency: int = 64
    #: Modules imported by the worker to register handlers (``@reliq.task``).
    apps: tuple[str, ...] = ()
    #: Seconds a worker waits for running tasks on SIGTERM before handing them back.
    drain_timeout: float = 30.0
    #: Default per-task timeout, seconds (a type may override it).
    task_timeout: float = 300.0
    #: Retries after the first failed attempt before a task is dead-lettered.
    max_retries: int = 3
    #: Backoff before retry n is retry_base * 2**(n-1) seconds, capped, with jitter.
    retry_base: float = 1.0
    retry_cap: float = 3600.0

    #: A worker silent this long is taken for dead and its tasks are requeued.
    lease: float = 15.0
    #: How often a worker heartbeats; must be well under the lease.
    heartbeat_interval: float = 2.0
    #: How often a worker moves due delayed tasks (retries, scheduled) into pending.
    promote_interval: float = 0.1
    #: How often a worker looks for dead workers (one round a queue at a time, under a lock
    #: in ``reap_scan.lua``), and trims succeeded records and, with a cap, dead letters.
    reap_interval: float = 1.0
    #: A worker logs a warning (task type and id) when a handler holds its event loop this long.
    loop_block_warn: float = 1.0
    #: Child processes a worker runs ``isolation="process"`` handlers in (0 = one per core).
    process_pool: int = 0
    #: Priorities: the longest a task waits behind higher-priority tasks enqueued after it,
    #: for priority 0 against 9 (a priority p, against q > p: (q - p) / 9 of it), seconds;
    #: 0 = strict priorities, no aging (reliq/priorities.py). Read by the claim (workers).
    priority_aging: float = 60.0
    #: Seconds a process-isolated handler has, once its task's cancel was asked for
    #: (``ctx.cancelled`` turns true in its child), before the child is killed.
    cancel_grace: float = 10.0
    #: Crashes of a worker running a task alone before that task is quarantined.
    crash_limit: int = 3
    #: Port of the worker's liveness endpoint, GET /healthz (0 = none; workers need no port).
    health_port: int = 0
    #: The lag the monitor's reliq_desired_workers estimate aims to keep queues under, s.
    target_lag: float = 10.0

    #: How long records of succeeded and cancelled tasks are kept, seconds.
    result_ttl: float = 24 * 3600.0
    #: How many succeeded records a queue keeps at most (the oldest go first), whatever
    #: the rate: with ``result_ttl``, BullMQ's removeOnComplete {age, count}. At ~200
    #: bytes a compact record, the default bounds them to ~0.3 GB a queue (docs/memory.md).
    keep_succeeded: int = 1_000_000
    #: How many dead-lettered tasks are kept (0 = no cap, the default). Past a cap the
    #: oldest are evicted into the dead-letter archive (counted, logged), never just dropped.
    dead_cap: int = 0
    #: Entries the dead-letter archive (a Redis stream) keeps; what falls off is counted.
    dead_archive_cap: int = 100_000
    #: How long an Idempotency-Key keeps returning the task it created, seconds.
    idempotency_ttl: float = 24 * 3600.0

    #: Where ``reliq all`` keeps the AOF of the redis-server it starts itself.
    data_dir: str = "./.reliq/redis"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Build settings from ``flags`` (None = not given), then ``env``, then defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "redis_url_given":
                continue
            raw = env.get(f"RELIQ_{f.name.upper()}")
            if f.name == "redis_url":
                raw = raw or env.get("REDIS_URL")
            if raw is not None and raw != "":
                values[f.name] = _cast(f.name, raw, f.default)
        given = {k: v for k, v in flags.items() if v is not None and v != ()}
        values.update(given)
        values["redis_url_given"] = "redis_url" in values
        if values.get("queues") and "queue" not in given:
            values["queue"] = str(values["queues"][0]).partition("=")[0]
        if isinstance(values.get("apps"), list):
            values["apps"] = tuple(values["apps"])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot work, saying what is wrong."""
        for name, _ in self.weighted_queues():
            check_queue_name(name)
        if not 0 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"partitions must be a whole number from 1 to {MAX_PARTITIONS} (0 = what Redis records)")
        if not self.target_lag > 0:
            raise ConfigError("target_lag must be a positive number of seconds")
        self._check_worker()
        if self.heartbeat_interval * 2 > self.lease:
            raise ConfigError("lease must be at least twice the heartbeat interval")
        self._check_access()
        if self.durability not in DURABILITIES:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITIES)}, not {self.durability!r}")
        if self.keep_succeeded < 0 or not self.result_ttl > 0 or self.max_waiters < 0:
            raise ConfigError("keep_succeeded (0 = keep no succeeded record) and max_waiters must be >= 0, "
                              "result_ttl above 0")
        if not 0 < self.max_memory_ratio <= 1:
            raise ConfigError("max_memory_ratio must be above 0 and at most 1 (a share of Redis's maxmemory)")
        if self.crash_limit < 1 or self.max_retries < 0 or self.dead_cap < 0 or self.dead_archive_cap < 1:
            raise ConfigError("crash_limit and dead_archive_cap must be >= 1, dead_cap and max_retries >= 0")

    def _check_worker(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if not 0 <= self.priority_aging < float("inf"):
            raise ConfigError("priority_aging must be a finite number of seconds >= 0 (0 = strict priorities)")
        if not self.loop_block_warn > 0 or self.process_pool < 0 or not self.cancel_grace >= 0:
            raise ConfigError("loop_block_warn must be a positive number of seconds, process_pool and "
                              "cancel_grace >= 0")

    def _check_access(self) -> None:
        if self.private and not self.api_token:
            raise ConfigError("--private needs a token: set RELIQ_API_TOKEN")
        if self.private and self.public_read:
            raise ConfigError("--private and --public-read contradict each other: choose one")
        if self.read_token and not self.api_token:
            raise ConfigError("RELIQ_READ_TOKEN needs RELIQ_API_TOKEN too (the read token may not write)")
        if self.read_token and self.read_token == self.api_token:
            raise ConfigError("RELIQ_READ_TOKEN must differ from RELIQ_API_TOKEN")

    def weighted_queues(self) -> list[tuple[str, int]]:
        """``queues`` as (name, weight) pairs: ``critical=6`` -> ("critical", 6); none -> [(queue, 1)]."""
        pairs: list[tuple[str, int]] = []
        for spec in self.queues or (self.queue,):
            name, _, weight = spec.partition("=")
            if weight and not (weight.isdigit() and int(weight) > 0):
                raise ConfigError(f"queue weight in {spec!r} must be a positive whole number")
            pairs.append((name, int(weight or 1)))
        if len({name for name, _ in pairs}) != len(pairs):
            raise ConfigError(f"a queue is named twice in {', '.join(self.queues)}")
        return pairs

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (the clients' own URL and queue; tests)."""
        return dataclasses.replace(self, **changes)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: ASCII whitespace: what names may not contain, and what a type may not consist of only.
#: Spelled out rather than ``\s``, whose meaning differs between regex engines, so the
#: OpenAPI schema's patterns and these checks agree on every string.
WHITESPACE = " \t\n\r\f\v"
#: Longest queue name.
MAX_QUEUE_LEN = 100
#: A queue name as a JSON Schema pattern: no braces (the hash tag), colons or whitespace.
QUEUE_PATTERN = "^[^{}:" + WHITESPACE.encode("unicode_escape").decode() + "]{1," + str(MAX_QUEUE_LEN) + "}$"


def check_queue_name(name: Any) -> str:
    """Return ``name`` if it can be a queue name (it becomes a Redis hash tag); raise otherwise."""
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_QUEUE_LEN
            or any(c in name for c in "{}:" + WHITESPACE)):
        raise ConfigError(f"queue name {name!r} must be 1 to {MAX_QUEUE_LEN} characters without braces, colons "
                          "or spaces")
    return name


def _cast(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p for p in raw.split(",") if p)
    except ValueError:
        raise ConfigError(f"RELIQ_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


@dataclass(frozen=True, slots=True)
class Retention:
    """How one task type keeps its succeeded records, where it differs from its queue's.

    ``age`` in seconds (None: the queue's ``result_ttl``), ``count`` records (None: the
    queue's ``keep_succeeded``; 0: none, deleted once they succeed).
    """

    age: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise ConfigError(f"keep_succeeded must be a whole number >= 0, not {self.count!r}")
        if self.age is not None and not self.age > 0:
            raise ConfigError(f"result_ttl must be a number of seconds above 0, not {self.age!r}")

    def limits(self, settings: Settings) -> tuple[int, int]:
        """(age in ms, count), the queue's own where this leaves them out."""
        age = settings.result_ttl if self.age is None else self.age
        return int(age * 1000), settings.keep_succeeded if self.count is None else self.count
