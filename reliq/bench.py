"""``reliq bench``: a load generator for a reliq deployment on this machine.

It enqueues tasks (``POST /task``, ``POST /tasks`` in batches, or the Python client with
no HTTP), flat out or at a fixed open-loop arrival rate, waits until every task it sent
has finished, then reads the task records and reports:

- enqueue rate (accepted tasks per second of the enqueue phase, on the client's clock);
- processing rate (tasks per second from the first start to the last finish, on the
  Redis clock the records carry);
- enqueue->start and enqueue->finish latency percentiles (from the records' ms stamps).

It only ever targets 127.0.0.1 (or localhost) and stops by itself: the enqueue phase is
bounded by ``tasks`` or ``duration``, the wait by ``timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import urlsplit

import aiohttp
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from reliq.client import AsyncClient
from reliq.connection import UNAVAILABLE, connect
from reliq.errors import ConfigError, InvalidTask
from reliq.queue import END_STATES, READ_CHUNK, Queue
from reliq.settings import Settings

#: Task record fields the report is computed from (ms on the Redis server's clock).
FIELDS = ("state", "enqueued_at", "started_at", "finished_at")
#: Seconds between polls for finished tasks.
POLL_S = 0.05

Send = Callable[[int], Awaitable[list[str]]]


@dataclass(frozen=True)
class BenchConfig:
    """What to send, how, and where (see ``reliq bench --help``)."""

    url: str = "http://127.0.0.1:8085"
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "default"
    tasks: int = 10_000
    duration: float | None = None
    concurrency: int = 64
    type: str = "noop"
    payload: Any = None
    batch: int = 0
    rate: float | None = None
    direct: bool = False
    token: str = ""
    timeout: float = 300.0
    progress: bool = True

    def check(self) -> None:
        """Refuse settings that cannot work, and any target not on this machine."""
        if self.tasks < 1 and self.duration is None:
            raise ConfigError("--tasks must be at least 1 (or give --duration)")
        if self.duration is not None and not 0 < self.duration <= 3600:
            raise ConfigError("--duration must be between 0 and 3600 seconds")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if not 0 <= self.batch <= 1000:
            raise ConfigError("--batch must be between 1 and 1000 (the API's limit)")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be a positive number of tasks per second")
        if not self.direct:
            _require_local(self.url, "--url")
        _require_local(self.redis_url, "--redis-url")


def _require_local(url: str, flag: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        raise ConfigError(f"{flag} {url!r}: reliq bench only targets this machine (127.0.0.1 or localhost)")


class SamplePercentiles(TypedDict):
    """Latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float


class BenchReport(TypedDict):
    """What ``reliq bench`` reports (also its ``--json`` output)."""

    mode: str
    type: str
    concurrency: int
    batch: int
    rate: float | None
    sent: int
    accepted: int
    rejected: dict[str, int]
    enqueue_s: float
    enqueue_rate: float
    request_ms: SamplePercentiles
    process_s: float
    process_rate: float
    enqueue_to_start_ms: SamplePercentiles
    enqueue_to_finish_ms: SamplePercentiles
    states: dict[str, int]
    unfinished: int


def sample_percentiles(values: Sequence[float]) -> SamplePercentiles:
    """Nearest-rank p50/p95/p99 and the max of ``values`` (all 0 when empty)."""
    if not values:
        return SamplePercentiles(p50=0.0, p95=0.0, p99=0.0, max=0.0)
    ordered = sorted(values)

    def rank(p: float) -> float:
        return float(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)])

    return SamplePercentiles(p50=rank(50), p95=rank(95), p99=rank(99), max=float(ordered[-1]))


@dataclass
class _Tally:
    """What the enqueue phase produced."""

    ids: list[str] = field(default_factory=list)
    sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    request_ms: list[float] = field(default_factory=list)


class Bench:
    """One bench run: enqueue, wait for the tasks to finish, read their records."""

    def __init__(self, config: BenchConfig, console: Console | None = None) -> None:
        config.check()
        self.config = config
        self.console = console or Console(stderr=True)
        self.tally = _Tally()
        self._body = orjson.dumps({"type": config.type, "payload": config.payload})
        self._progress: Progress | None = None
        self._sent_bar: Any = None
        self._done_bar: Any = None

    @property
    def mode(self) -> str:
        """direct | http | http-batch."""
        return "direct" if self.config.direct else ("http-batch" if self.config.batch else "http")

    async def run(self) -> BenchReport:
        """Run the whole benchmark and return its report."""
        redis = connect(self.config.redis_url, max_connections=4)
        try:
            await redis.ping()
            queue = Queue(redis, Settings(redis_url=self.config.redis_url, queue=self.config.queue))
            with self._progress_bar():
                started = time.perf_counter()
                await self._enqueue()
                enqueue_s = time.perf_counter() - started
                unfinished = await self._wait_finished(queue)
            records = await queue.task_fields(self.tally.ids, FIELDS)
        finally:
            await redis.aclose()
        return self._report(enqueue_s, records, unfinished)

    # -- enqueueing ------------------------------------------------------------------

    async def _enqueue(self) -> None:
        c = self.config
        if c.direct:
            client = AsyncClient(c.redis_url, c.queue)
            try:
                await self._drive(self._direct_sender(client))
            finally:
                await client.close()
            return
        headers = {"Content-Type": "application/json"}
        if c.token:
            headers["Authorization"] = f"Bearer {c.token}"
        connector = aiohttp.TCPConnector(limit=c.concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
            await self._drive(self._http_sender(session))

    def _per_request(self) -> int:
        return max(1, self.config.batch)

    def _direct_sender(self, client: AsyncClient) -> Send:
        c = self.config

        async def send(n: int) -> list[str]:
            if n == 1 and not c.batch:
                return [await client.enqueue(c.type, c.payload)]
            return await client.enqueue_many([(c.type, c.payload)] * n)

        return send

    def _http_sender(self, session: aiohttp.ClientSession) -> Send:
        base = self.config.url.rstrip("/")
        batched = bool(self.config.batch)

        async def send(n: int) -> list[str]:
            if batched:
                body = b"[" + b",".join([self._body] * n) + b"]"
                url = base + "/tasks"
            else:
                body, url = self._body, base + "/task"
            async with session.post(url, data=body) as resp:
                raw = await resp.read()
                if resp.status not in (200, 202):
                    self.tally.rejected[str(resp.status)] += n
                    return []
            reply = orjson.loads(raw)
            return list(reply["task_ids"]) if batched else [reply["task_id"]]

        return send

    async def _drive(self, send: Send) -> None:
        """Closed loop (``concurrency`` senders flat out) or open loop (``rate``)."""
        c = self.config
        deadline = None if c.duration is None else time.monotonic() + c.duration
        limit = c.tasks if c.duration is None else None
        if c.rate is None:
            await asyncio.gather(*(self._closed_sender(send, deadline, limit) for _ in range(c.concurrency)))
        else:
            await self._open_loop(send, deadline, limit)

    def _take(self, deadline: float | None, limit: int | None) -> int:
        """Reserve the size of the next request; 0 when the run has sent enough."""
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        n = self._per_request()
        if limit is not None:
            n = min(n, limit - self.tally.sent)
        if n > 0:
            self.tally.sent += n
        return max(0, n)

    async def _closed_sender(self, send: Send, deadline: float | None, limit: int | None) -> None:
        while n := self._take(deadline, limit):
            await self._one(send, n)

    async def _open_loop(self, send: Send, deadline: float | None, limit: int | None) -> None:
        """Start requests at the arrival rate, whatever the replies do (at most
        ``concurrency`` in flight; a request that finds them all busy waits and is late)."""
        assert self.config.rate is not None
        interval = self._per_request() / self.config.rate
        slots = asyncio.Semaphore(self.config.concurrency)
        running: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for i in itertools.count():
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n = self._take(deadline, limit)
            if not n:
                break
            await slots.acquire()
            task = asyncio.create_task(self._one(send, n))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        await asyncio.gather(*running)

    async def _one(self, send: Send, n: int) -> None:
        started = time.perf_counter()
        try:
            ids = await send(n)
        except (aiohttp.ClientError, TimeoutError, InvalidTask, *UNAVAILABLE) as exc:
            self.tally.rejected[type(exc).__name__] += n
            return
        self.tally.request_ms.append((time.perf_counter() - started) * 1000)
        self.tally.ids.extend(ids)
        if self._progress is not None:
            self._progress.update(self._sent_bar, completed=len(self.tally.ids))

    # -- waiting and reading -------------------------------------------------------------

    async def _wait_finished(self, queue: Queue) -> int:
        """Poll the records of tasks not yet finished, oldest first; return how many never did."""
        left = list(self.tally.ids)
        total = len(left)
        if self._progress is not None:
            self._progress.update(self._sent_bar, total=total, completed=total)
            self._progress.update(self._done_bar, total=total)
        deadline = time.monotonic() + self.config.timeout
        while left and time.monotonic() < deadline:
            left = await _still_running(queue, left)
            if self._progress is not None:
                self._progress.update(self._done_bar, completed=total - len(left))
            if left:
                await asyncio.sleep(POLL_S)
        return len(left)

    def _progress_bar(self) -> Progress:
        show = self.config.progress
        progress = Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, disable=not show, transient=False)
        if show:
            self._progress = progress
            total = self.config.tasks if self.config.duration is None else None
            self._sent_bar = progress.add_task("accepted", total=total)
            self._done_bar = progress.add_task("finished", total=total)
        return progress

    # -- reporting -------------------------------------------------------------------------

    def _report(self, enqueue_s: float, records: list[list[bytes | None]], unfinished: int) -> BenchReport:
        c = self.config
        states: Counter[str] = Counter()
        to_start: list[float] = []
        to_finish: list[float] = []
        first_start, last_finish = math.inf, -math.inf
        for state, enqueued, started, finished in records:
            states[state.decode() if state else "expired"] += 1
            if enqueued and started:
                to_start.append(int(started) - int(enqueued))
                first_start = min(first_start, int(started))
            if enqueued and finished:
                to_finish.append(int(finished) - int(enqueued))
                last_finish = max(last_finish, int(finished))
        process_s = max(0.0, (last_finish - first_start) / 1000) if to_finish and to_start else 0.0
        accepted = len(self.tally.ids)
        return BenchReport(
            mode=self.mode, type=c.type, concurrency=c.concurrency, batch=c.batch, rate=c.rate,
            sent=self.tally.sent, accepted=accepted, rejected=dict(self.tally.rejected),
            enqueue_s=round(enqueue_s, 3),
            enqueue_rate=round(accepted / enqueue_s, 1) if enqueue_s > 0 else 0.0,
            request_ms=sample_percentiles(self.tally.request_ms),
            process_s=round(process_s, 3),
            process_rate=round(len(to_finish) / process_s, 1) if process_s > 0 else 0.0,
            enqueue_to_start_ms=sample_percentiles(to_start), enqueue_to_finish_ms=sample_percentiles(to_finish),
            states=dict(states), unfinished=unfinished,
        )


async def _still_running(queue: Queue, ids: list[str]) -> list[str]:
    """``ids`` less those finished (or expired), checked oldest first: tasks run roughly in
    arrival order, so the check stops at the first chunk that still has one running."""
    for i in range(0, len(ids), READ_CHUNK):
        chunk = ids[i : i + READ_CHUNK]
        running = [t for t, state in zip(chunk, await queue.states(chunk), strict=True)
                   if state and state not in END_STATES]
        if running:
            return running + ids[i + READ_CHUNK :]
    return []


def render(report: BenchReport, console: Console) -> None:
    """Print a report as two small tables."""
    head = Table(title=f"reliq bench: {report['mode']}, type {report['type']!r}, concurrency "
                       f"{report['concurrency']}" + (f", batch {report['batch']}" if report["batch"] else "")
                       + (f", rate {report['rate']:g}/s" if report["rate"] else ""), show_header=False)
    head.add_row("accepted", f"{report['accepted']:,} of {report['sent']:,}")
    if report["rejected"]:
        head.add_row("rejected", ", ".join(f"{k}: {v:,}" for k, v in report["rejected"].items()))
    head.add_row("enqueue", f"{report['enqueue_rate']:,.0f} tasks/s ({report['enqueue_s']:.2f} s)")
    head.add_row("processing", f"{report['process_rate']:,.0f} tasks/s ({report['process_s']:.2f} s)")
    head.add_row("states", ", ".join(f"{k}: {v:,}" for k, v in sorted(report["states"].items())))
    if report["unfinished"]:
        head.add_row("unfinished", f"{report['unfinished']:,} (timed out waiting)")
    console.print(head)
    lat = Table(title="latency (ms)")
    for col in ("", "p50", "p95", "p99", "max"):
        lat.add_column(col, justify="right")
    for name, key in (("request", "request_ms"), ("enqueue->start", "enqueue_to_start_ms"),
                      ("enqueue->finish", "enqueue_to_finish_ms")):
        p: SamplePercentiles = report[key]  # type: ignore[literal-required]
        lat.add_row(name, f"{p['p50']:.1f}", f"{p['p95']:.1f}", f"{p['p99']:.1f}", f"{p['max']:.1f}")
    console.print(lat)


def run_bench(config: BenchConfig, as_json: bool = False) -> int:
    """``reliq bench``: run, print the report; exit 1 when a task did not finish."""
    from reliq.eventloop import run

    async def main() -> int:
        report = await Bench(config).run()
        if as_json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        else:
            render(report, Console())
        return 1 if report["unfinished"] or report["accepted"] < report["sent"] else 0

    return run(main)
