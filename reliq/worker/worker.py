"""A worker process: a fixed set of runner coroutines fed by one fetcher and one settler.

- The fetcher claims as many tasks as there are idle runners in one script call, and
  waits for a wake-up (reliq/worker/nudges.py) when every queue is empty. With short
  tasks it claims ahead: as many more as the runners finish during one claim round
  trip (see :meth:`Worker.ahead`), so they never wait for Redis and Redis never waits
  for them.
- Runners execute handlers: async ones on the loop, plain ones in a thread pool.
- The settler acknowledges finished tasks in batches, one script call per batch.
- One pub/sub connection (one a shard on a cluster) brings the wake-ups of all the queues
  and the cancels of running tasks, which the runners stop (reliq/worker/cancels.py; the
  heartbeat's reply brings the cancels too); what handlers report
  with ``ctx.progress`` is written once a second (reliq/worker/progress.py).
- Promoter and reaper loops run beside them, and a loop watch (reliq/loopwatch.py); the
  heartbeat runs in a thread of its own, so a handler that blocks the loop cannot
  silence it (reliq/worker/heartbeat.py).

A task is in this worker's processing list from the moment Redis moves it until its
outcome is settled, so a crash at any point leaves it where the reaper finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

import reliq.builtins  # noqa: F401  (the built-in task types are always there)
from reliq import logs, partitions, tracing, type_defaults
from reliq.calls import SPEAKS
from reliq.connection import UNAVAILABLE
from reliq.errors import GaveUp, HandlerFailed, PermanentError, RateLimited, Snooze, describe_error
from reliq.formats import RecordFormat, RunOutcome
from reliq.loops import cancel_all
from reliq.loopwatch import Culprit, LoopWatch
from reliq.outage import NEVER, GiveUp, Outage
from reliq.queue import MAX_DELAY_S, Claimed, Outcome, Queue
from reliq.registry import REGISTRY, Context, Handler, Registry
from reliq.schedules import Declared
from reliq.settings import Settings
from reliq.worker import procpool
from reliq.worker.cancels import Cancels
from reliq.worker.dead_trimmer import DeadTrimmer
from reliq.worker.fetcher import Fetcher
from reliq.worker.heartbeat import Heartbeat, landing_time
from reliq.worker.nudges import Nudges
from reliq.worker.periodic_enqueuer import PeriodicEnqueuer
from reliq.worker.procpool import ProcessPool
from reliq.worker.progress import ProgressWriter
from reliq.worker.promoter import Promoter
from reliq.worker.reaper import Reaper
from reliq.worker.succeeded_trimmer import SucceededTrimmer
from reliq.worker.watchdog import Watchdog

log = logging.getLogger(__name__)
#: The outcomes, bound once: they are used a task, and on Python 3.11 a member looked up on
#: its enum costs ~0.25 us (timeit), ten times a module global.
OK, ERROR, TIMEOUT, SNOOZE = RunOutcome.OK, RunOutcome.ERROR, RunOutcome.TIMEOUT, RunOutcome.SNOOZE
PERMANENT, UNKNOWN_TYPE, CANCELLED = RunOutcome.PERMANENT, RunOutcome.UNKNOWN_TYPE, RunOutcome.CANCELLED
RATE_LIMITED = RunOutcome.RATE_LIMITED

#: How long an idle fetcher waits for wake-ups before it claims from every queue again
#: (the fallback for a wake-up lost with its connection; stop, burst end).
BLOCK_S = 1.0
#: The connections of a worker process's client, shared by the claims, the settles and the
#: loops of all its queues: on one server, 5 with its pub/sub connection among them; on a
#: cluster, 3 a node, beside a pub/sub connection of its own a shard and the one redis-py
#: keeps on the seed node it read the slot map from. With the heartbeat's, a worker
#: process holds at most 6 a Redis (a shard), whatever the number of its queues.
def pool_size(cluster: bool) -> int:
    """The size of a worker process's pool (a node's, on a cluster)."""
    return 3 if cluster else 5


#: In burst mode the fetcher looks more often, to return soon after the last task.
BURST_BLOCK_S = 0.05
#: How often a task held past its timeout, its thread still running, is logged again, seconds.
HOLD_LOG_S = 10.0
#: Weight of the newest sample in the running means of run time and claim round trip.
EWMA = 0.05


class Worker:
    """Runs tasks of one queue until stopped (or, in burst mode, until it is empty)."""

    def __init__(self, queues: Queue | Sequence[tuple[Queue, int]], settings: Settings,
                 registry: Registry = REGISTRY, *, burst: bool = False, worker_id: str | None = None,
                 strict: bool = False, schedules: Sequence[Declared] = ()) -> None:
        weighted = [(queues, 1)] if isinstance(queues, Queue) else list(queues)
        self.queues = {q.name: q for q, _ in weighted}
        self.settings = settings
        self.registry = registry
        #: The periodic schedules the --app modules declared (reliq.periodic), written at start.
        self.schedules = list(schedules)
        self._retentions = registry.retentions()  # types keeping succeeded records their own way
        self.burst = burst
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: The wake-ups of all the queues and the cancel nudges, on one pub/sub connection (a shard).
        self.nudges = Nudges([q for q, _ in weighted], self.id, lambda task_id: self.cancels.ask(task_id))
        self.fetcher = Fetcher(weighted, self.id, strict=strict, nudges=self.nudges)
        self.concurrency = settings.concurrency
        self.held: dict[str, Claimed] = {}  # claimed and not yet settled
        self.busy = 0  # claimed and not yet finished: running, or waiting for a runner
        self._run_s = 1.0  # running mean of a task's run time, seconds (cautious at start)
        self._claim_s = 0.001  # running mean of a claim's round trip, seconds
        self.processed = 0
        self._ready: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self._done: list[Outcome] = []
        self._settle_wake = asyncio.Event()
        self._settling = False
        self._changed = asyncio.Event()  # a runner finished or a batch settled
        self._stopping = False
        self._pool: ThreadPoolExecutor | None = None
        self._procs: ProcessPool | None = None  # children of isolation="process" handlers
        self._overrunning: dict[str, Future[Any]] = {}  # timed-out tasks whose threads still run
        #: Set when the worker stopped with such a thread still running: its process must
        #: exit at once (Python would wait for the thread), see roles.serve.
        self.threads_left = False
        self._watchdog = Watchdog()  # task timeouts: one timer for all runners
        self._fetch_task: asyncio.Task[None] | None = None
        self._orphan_check = 0.0  # when the fetcher next looks for orphans in its list (monotonic)
        self._traced = False  # spans an attempt (OpenTelemetry set up): see reliq.tracing
        self._running: dict[asyncio.Task[Any], Claimed] = {}  # runner -> the task it runs
        self.watch = LoopWatch(settings.loop_block_warn, self._culprit)
        #: Cancel requests of held tasks, and how to stop each running one (reliq/worker/cancels.py).
        self.cancels = Cancels(registry, self.held, self._running, settings.cancel_grace)
        #: What handlers report with ctx.progress, written once a second (reliq/worker/progress.py).
        self.progress = ProgressWriter(self.queues, self.id)

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, hard_stop: asyncio.Event | None = None) -> bool:
        """Work until ``stop`` is set (or the queue is empty in burst mode), then drain.

        Setting ``hard_stop`` during the drain skips the rest of the wait. Returns True
        when everything this worker held was settled or handed back.
        """
        # every line this worker's loops and handlers log names it (--log-format json)
        with logs.fields(worker=self.id):
            return await self._run(stop or asyncio.Event(), hard_stop or asyncio.Event())

    async def _run(self, stop: asyncio.Event, hard_stop: asyncio.Event) -> bool:
        s = self.settings
        loop = asyncio.get_running_loop()
        if not await self._until_redis(self._serve_partitions, stop):
            return True  # stopped while waiting for Redis: it never claimed anything

        def beat_cancels(ids: tuple[str, ...]) -> None:  # from the heartbeat's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
                loop.call_soon_threadsafe(self._ask_cancels, ids)

        heartbeat = Heartbeat(s.redis_url, list(self.queues), self.id, s.heartbeat_interval, s.lease, self.status,
                              self.watch, beat_cancels)
        # The first heartbeat comes last: a stop while an earlier step waits for Redis then
        # leaves nothing registered behind it (no worker entry for the reapers to time out).
        if not (await self._until_redis(self._declare_limits, stop)
                and await self._until_redis(self._declare_defaults, stop)
                and await self._until_redis(self._declare_schedules, stop)
                and await self._until_redis(lambda: asyncio.to_thread(heartbeat.run_once), stop)):
            heartbeat.stop()
            return True  # stopped while waiting for Redis: it never claimed anything
        heartbeat.start()
        try:
            return await self._work(stop, hard_stop, heartbeat)
        finally:
            heartbeat.stop()

    async def _work(self, stop: asyncio.Event, hard_stop: asyncio.Event, heartbeat: Heartbeat) -> bool:
        s = self.settings
        if any(h.isolation == "process" for h in map(self.registry.get, self.registry.names()) if h):
            self._procs = ProcessPool(s.process_pool or os.cpu_count() or 1, s.apps)
            await self._procs.start()  # before the first claim: no task waits for a child to start
        background = [asyncio.create_task(self.watch.run(self.stuck_after), name="loopwatch"),
                      asyncio.create_task(self.progress.run(), name="progress"),
                      asyncio.create_task(self.nudges.run(), name="nudges")]
        for queue in self.queues.values():
            with logs.fields(queue=queue.name):  # the tasks created here log their queue
                background += [
                    asyncio.create_task(Promoter(queue, s.promote_interval).run(), name="promoter"),
                    asyncio.create_task(Reaper(queue, s.lease, s.reap_interval, self.id,
                                               landing_time(s.heartbeat_interval)).run(), name="reaper"),
                ]
                background.append(asyncio.create_task(
                    SucceededTrimmer(queue, self._retentions, s.reap_interval).run(), name="succeeded-trimmer"))
                if s.dead_cap:
                    background.append(asyncio.create_task(DeadTrimmer(queue, s.reap_interval).run(),
                                                          name="dead-trimmer"))
                if not self.burst:  # a burst worker ends once the queue is empty: no slot to wait for
                    background.append(asyncio.create_task(PeriodicEnqueuer(queue).run(), name="periodic-enqueuer"))
        runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]
        runners.append(asyncio.create_task(self._watchdog.run(), name="watchdog"))
        settler = asyncio.create_task(self._settler(), name="settler")
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name="fetcher")
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait([stop_wait, self._fetch_task], return_when=asyncio.FIRST_COMPLETED)
        await cancel_all([stop_wait])
        self._stopping = True
        await cancel_all([self._fetch_task])
        self._unqueue()
        log.info("worker %s stopping: %d task(s) running", self.id, self.busy)
        await self._drain(hard_stop)
        await cancel_all(runners)
        await self._flush(settler)
        heartbeat.stop()  # no beat may re-register this worker after it deregistered
        released = await self._release()
        await cancel_all(background)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._procs:
            await self._procs.close()
        return released

    async def _drain(self, hard_stop: asyncio.Event) -> None:
        """Let running tasks finish, up to the drain timeout or a second signal."""
        deadline = time.monotonic() + self.settings.drain_timeout
        while self.busy and not hard_stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("drain timeout: %d task(s) still running are handed back", self.busy)
                return
            self._changed.clear()
            waiters = [asyncio.create_task(self._changed.wait()), asyncio.create_task(hard_stop.wait())]
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            await cancel_all(waiters)

    async def _flush(self, settler: asyncio.Task[None]) -> None:
        """Settle what has finished (riding out a short outage), then stop the settler."""
        self._settle_wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(5.0, self.settings.heartbeat_interval)):
                while self._done or self._settling:
                    await self._wait_change()
        await cancel_all([settler])

    async def _release(self) -> bool:
        """Hand back whatever is still held and deregister; retry through a short outage.

        Not while a timed-out task's thread still runs: its retry would start beside it.
        The worker then stays registered with its last heartbeat and its list as it is,
        and its process exits at once; the reaper recovers the tasks one lease later.
        """
        running = [i for i, thread in self._overrunning.items() if not thread.done()]
        if running:
            self.threads_left = True
            log.error("task(s) %s still running in threads past their timeout: nothing is handed back, so that no "
                      "retry starts beside them; this process exits now and the reaper requeues its %d task(s) "
                      "after the %.0fs lease", ", ".join(running), len(self.held), self.settings.lease)
            return False
        outage = Outage("hand-back", log, give_up=GiveUp(after_s=max(10.0, self.settings.heartbeat_interval * 2)))
        try:
            n = await outage.call(self._release_all)
        except GaveUp as exc:
            log.error("could not hand back tasks (%s); the reaper will requeue them after the %.0fs lease",
                      exc.__cause__, self.settings.lease)
            return False
        if n:
            log.info("handed back %d unfinished task(s) to pending", n)
        return True

    async def _release_all(self) -> int:
        return sum([await queue.release(self.id) for queue in self.queues.values()])

    async def _until_redis(self, step: Any, stop: asyncio.Event) -> bool:
        """Run ``step`` until Redis answers (a worker may start before Redis does); False if stopped first."""
        try:  # a signal ends the wait, Redis or not
            await Outage("waiting for Redis", log, give_up=GiveUp(when=stop)).call(
                step, note="the worker starts once it answers")
        except GaveUp:
            return False
        return True

    async def _serve_partitions(self) -> None:
        """Serve each partitioned queue as its partitions, each one of this worker's queues (reliq/partitions.py)."""
        weighted = list(zip(self.fetcher.queues, self.fetcher.weights, strict=True))
        for queue, _ in weighted:
            await queue.parts()
        if all(len(q.parts_now()) == 1 for q, _ in weighted):
            return
        weighted = partitions.expand(weighted)
        self.queues = {q.name: q for q, _ in weighted}
        self.nudges = Nudges([q for q, _ in weighted], self.id, lambda task_id: self.cancels.ask(task_id))
        self.fetcher = Fetcher(weighted, self.id, strict=self.fetcher.strict, nudges=self.nudges)
        self.progress = ProgressWriter(self.queues, self.id)

    async def _declare_limits(self) -> None:
        """Write the flow limits the registered types declare to every queue served (before the first claim)."""
        declared = self.registry.declared_limits()
        for queue in self.queues.values():
            await queue.write_limits("declared", declared)

    async def _declare_defaults(self) -> None:
        """Write the enqueue defaults the registered types declare to every queue served (reliq/type_defaults.py)."""
        await type_defaults.register(list(self.queues.values()), self.registry)

    async def _declare_schedules(self) -> None:
        """Write the periodic schedules the --app modules declare, each to its queue (before the first claim)."""
        first = next(iter(self.queues.values()))  # where a schedule naming no queue goes
        by_queue: dict[str, list[Declared]] = {}
        for d in self.schedules:
            by_queue.setdefault(d.queue or first.name, []).append(d)
        for name, declared in by_queue.items():
            queue = self.queues.get(name) or Queue(first.redis, self.settings, name)
            await PeriodicEnqueuer(queue, declared).declare()

    def _ask_cancels(self, ids: tuple[str, ...]) -> None:
        for task_id in ids:
            self.cancels.ask(task_id)

    def _unqueue(self) -> None:
        """Take back the claimed tasks no runner has started: the release hands them back."""
        while not self._ready.empty():
            task = self._ready.get_nowait()
            if task is not None:
                del self.held[task.id]
                self.busy -= 1

    def status(self) -> dict[str, Any]:
        """What the heartbeat publishes about this worker (read from the heartbeat thread)."""
        return {"concurrency": self.concurrency, "in_flight": self.busy - self._ready.qsize(),
                "processed": self.processed, "queues": ",".join(self.queues),
                "loop_blocks": self.watch.blocks, "loop_blocked_ms": round(self.watch.blocked_s * 1000),
                SPEAKS: int(RecordFormat.BODY)}  # reliq records upgrade reads it

    def stuck_after(self) -> float:
        """Seconds without a loop tick after which this worker is stuck for good, and stops beating.

        The longest timeout among the tasks it holds, plus the lease: a handler blocking the
        loop may run that long legitimately (its timeout cannot fire while the loop is held).
        """
        longest = 0.0
        for task in self.held.values():
            handler = self.registry.get(task.type)
            longest = max(longest, self._timeout(handler, task) if handler else self.settings.task_timeout)
        return longest + self.settings.lease

    def _culprit(self, current: asyncio.Task[Any] | None) -> Culprit:
        """Who holds the loop, for the loop watch (called from the heartbeat thread)."""
        task = self._running.get(current) if current is not None else None
        if task is not None:
            return task.queue, f"task {task.type} {task.id} (queue {task.queue})"
        if current is not None:
            return "", f"asyncio task {current.get_name()!r}, not a task handler"
        return "", "a callback outside any asyncio task"

    def ahead(self) -> int:
        """How many tasks to claim beyond one a runner: what the runners finish in a claim's round trip.

        Claiming only when a runner is idle makes the two sides take turns: Redis runs the
        claim while the runners wait, then the runners run while Redis waits. Tasks claimed
        ahead keep both busy. The amount is what ``concurrency`` runners finish in one
        round trip, at most ``concurrency``: a task claimed ahead then waits for a runner
        about as long as it would have waited for the claim, and with long tasks (where
        one round trip finishes next to nothing) nothing is claimed ahead, so a task never
        sits behind a slow one on this worker while another worker is idle. A task claimed
        ahead is in this worker's list like a running one: if the worker dies, it is
        recovered, and counted a crash, like the tasks that were running.
        """
        return min(self.concurrency, round(self.concurrency * self._claim_s / self._run_s))

    # -- fetching -----------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        outage = Outage("fetcher", log, give_up=NEVER, retry_other_errors=True)
        self._orphan_check = time.monotonic() + self.settings.lease
        while not self._stopping:
            if await outage.call(lambda: self._fetch_round(after_outage=outage.down is not None)):
                return

    async def _fetch_round(self, after_outage: bool) -> bool:
        """Look for orphans after an outage (and now and then), then claim; True when a burst run is finished."""
        if after_outage or time.monotonic() > self._orphan_check:
            # A lost reply leaves ids in our list that we do not know we hold; so can a
            # failover (or an AOF everysec restart) that loses the last acks, while our
            # heartbeat keeps the reaper away: look for them now and then, not only after an error.
            self._orphan_check = time.monotonic() + self.settings.lease
            await self._adopt_orphans()
        return await self._fetch_once()

    async def _fetch_once(self) -> bool:
        """Claim what idle runners can take; return True when a burst run is finished."""
        # At most a runner's worth a claim, so that with tasks held ahead the next claim
        # is sent as soon as one arrives, and runs in Redis while this one runs here.
        free = min(self.concurrency, self.concurrency + self.ahead() - self.busy)
        if free <= 0 or self._holds_suspect():
            await self._wait_change()
            return False
        sent = time.perf_counter()
        tasks, blocked = await self.fetcher.claim(free, len(self.held))
        self._claim_s += EWMA * (time.perf_counter() - sent - self._claim_s)
        if tasks:
            self._dispatch(tasks)
            return False
        if blocked:  # a crash suspect waits for a worker that holds nothing else
            while self.held:
                await self._wait_change()
            return False
        if self.burst and not self.held and await self.fetcher.empty():
            return True
        block_s = BURST_BLOCK_S if self.burst else BLOCK_S
        self._dispatch(await self.fetcher.wait(block_s, free, len(self.held)))
        return False

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _holds_suspect(self) -> bool:
        return any(t.crashes for t in self.held.values()) if len(self.held) == 1 else False

    def _dispatch(self, tasks: list[Claimed]) -> None:
        self._traced = tracing.on()  # once a claim, not once a task: the look-up costs a microsecond
        for t in tasks:
            if t.id in self.held:  # re-adopted after a lost reply: it is already running
                continue
            self.held[t.id] = t
            self.busy += 1
            self._ready.put_nowait(t)

    async def _adopt_orphans(self) -> None:
        """After a lost reply, claim ids in our list that we do not know we hold."""
        with contextlib.suppress(*UNAVAILABLE):  # still down: the next failure brings us back
            self._dispatch(await self.fetcher.adopt_orphans(self.held, len(self.held)))

    # -- running ---------------------------------------------------------------------------

    async def _runner(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            task = await self._ready.get()
            if task is None:
                return
            start = time.perf_counter()
            self._running[me] = task
            logs.set_task(task)  # the handler's own log lines carry the task's fields
            debug = log.isEnabledFor(logging.DEBUG)
            try:
                if debug:
                    log.debug("task %s (%s) started, attempt %d", task.id, task.type, task.attempts)
                if self._traced:
                    outcome = await tracing.attempt(task, self._execute(task, me, start))
                else:
                    outcome = await self._execute(task, me, start)
                if debug:
                    _log_outcome(outcome)
            finally:
                del self._running[me]
                self.busy -= 1
                self._changed.set()
            self._run_s += EWMA * (time.perf_counter() - start - self._run_s)
            self._done.append(outcome)
            self._settle_wake.set()

    async def _execute(self, task: Claimed, runner: asyncio.Task[Any], start: float) -> Outcome:
        handler = self.registry.get(task.type)
        if handler is None:
            return Outcome(task, UNKNOWN_TYPE, f"no handler is registered for type {task.type!r}", 0)
        if task.id in self.cancels.asked:  # claimed ahead, and cancelled before a runner took it
            return Outcome(task, CANCELLED, "", 0)
        try:
            result = await self._call(handler, task, runner)
            text = "" if result is None else orjson.dumps(result, default=str).decode()
            outcome = Outcome(task, OK, text, _ms_since(start))
        except asyncio.CancelledError:
            if not self.cancels.take_back(runner):
                raise  # the shutdown's: that one stands
            outcome = Outcome(task, CANCELLED, "", _ms_since(start))
        except Exception as exc:
            outcome = self._raised(handler, task, exc, start)
        finally:
            self.cancels.ended(task.id, runner)
        if self.cancels.asked and outcome.outcome != CANCELLED and self.cancels.passed(task, handler):
            # the handler saw the request (a thread or child returning after ctx.cancelled): cancelled, as asked
            outcome = Outcome(task, CANCELLED, outcome.text, outcome.run_ms)
        return outcome

    def _raised(self, handler: Handler, task: Claimed, exc: Exception, start: float) -> Outcome:
        """The outcome of an attempt whose handler raised ``exc``."""
        if isinstance(exc, Snooze):  # again later, this attempt not spent
            return Outcome(task, SNOOZE, str(exc), _ms_since(start), int(min(exc.seconds, MAX_DELAY_S) * 1000))
        if isinstance(exc, PermanentError):
            return Outcome(task, PERMANENT, describe_error(exc), _ms_since(start))
        if isinstance(exc, RateLimited):  # back without spending an attempt; its type or key held (settle.lua)
            return Outcome(task, RATE_LIMITED, describe_error(exc), _ms_since(start), round(exc.retry_after * 1000))
        if isinstance(exc, HandlerFailed):  # in a child process: its error as it was, or how the child died
            if not exc.retried:  # the child applied the type's policy, knowing the exception's class
                return Outcome(task, PERMANENT, str(exc), _ms_since(start))
            return self._failed(handler, task, ERROR, str(exc), exc, start, routed=True)
        if isinstance(exc, TimeoutError):
            return self._failed(handler, task, TIMEOUT, f"timed out after {self._timeout(handler, task):g}s", exc,
                                start)
        return self._failed(handler, task, ERROR, describe_error(exc), exc, start)

    def _failed(self, handler: Handler, task: Claimed, kind: RunOutcome, text: str, exc: BaseException, start: float,
                routed: bool = False) -> Outcome:
        """A failed attempt: dead at once when the type's policy does not retry ``exc``, else its backoff."""
        policy = handler.retry
        if not routed and not policy.retries(exc):
            return Outcome(task, PERMANENT, text, _ms_since(start))
        delay = policy.delay_ms(task.failures + 1, exc, self.settings.retry_base, self.settings.retry_cap)
        return Outcome(task, kind, text, _ms_since(start), delay)

    def _timeout(self, handler: Handler, task: Claimed) -> float:
        if task.timeout_ms:
            return task.timeout_ms / 1000
        return handler.timeout or self.settings.task_timeout

    async def _call(self, handler: Handler, task: Claimed, runner: asyncio.Task[Any]) -> Any:
        if handler.isolation == "process":
            return await self._in_child(handler, task, runner)
        try:
            payload = orjson.loads(task.payload)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"payload is not valid JSON: {exc}") from None
        ctx = self._context(task) if handler.wants_context else None
        timeout = self._started(handler, task)
        if handler.is_async:
            return await self._watchdog.within(handler.call(payload, ctx), timeout, runner)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="reliq-task")
        # in the runner's context, so that the handler's log lines carry the task's fields
        thread = self._pool.submit(contextvars.copy_context().run, handler.call, payload, ctx)
        try:
            return await self._watchdog.within(asyncio.wrap_future(thread), timeout, runner)
        except TimeoutError:
            await self._hold(task, thread, timeout)
            raise

    def _context(self, task: Claimed) -> Context:
        """A handler's ``ctx``: its task, its cancel flag, its progress going to the writer."""
        return Context(task.id, task.type, task.attempts, cancel=self.cancels.context_flag(task.id),
                       report=functools.partial(self.progress.report, task.queue, task.id))

    async def _hold(self, task: Claimed, thread: Future[Any], timeout: float) -> None:
        """Keep a timed-out task (and its runner's slot) until its thread returns.

        A thread cannot be stopped. Settling the timeout at once would schedule the retry
        while the first attempt still runs (two charges of one card); so the task stays in
        this worker's list, covered by its heartbeat, until the thread is done. Should the
        worker die meanwhile, the reaper recovers it as it would any running task.
        """
        self._overrunning[task.id] = thread
        wrapped = asyncio.wrap_future(thread)
        loop = asyncio.get_running_loop()
        since = loop.time()
        log.warning("task %s %s timed out after %gs, but a thread cannot be stopped: it keeps its slot, and its "
                    "retry waits until it returns (isolation='process' would kill it)", task.type, task.id, timeout)
        while not thread.done():
            await asyncio.wait([wrapped], timeout=HOLD_LOG_S)
            if not thread.done():
                log.warning("task %s %s still running in its thread, %.0fs past its %gs timeout; its retry waits",
                            task.type, task.id, loop.time() - since, timeout)
        del self._overrunning[task.id]
        log.info("task %s %s: its thread returned %.1fs past its %gs timeout; the retry may start",
                 task.type, task.id, loop.time() - since, timeout)

    def _started(self, handler: Handler, task: Claimed) -> float:
        """The task's timeout, which counts at once towards when this worker is stuck for good."""
        timeout = self._timeout(handler, task)
        if timeout + self.settings.lease > self.watch.stuck_after:  # before the loop watch's next tick sees it
            self.watch.stuck_after = timeout + self.settings.lease
        return timeout

    async def _in_child(self, handler: Handler, task: Claimed, runner: asyncio.Task[Any]) -> Any:
        """Run a handler with isolation="process"; its timeout starts once a child is free."""
        if self._procs is None:
            self._procs = ProcessPool(self.settings.process_pool or os.cpu_count() or 1, self.settings.apps)
        ctx = (task.id, task.type, task.attempts) if handler.wants_context else None
        request = procpool.request(handler.fn.__module__, task.type, task.payload, ctx)
        report = functools.partial(self.progress.report, task.queue, task.id) if ctx else None
        async with self._procs.child() as child:
            self.cancels.child_taken(task.id, child)
            timeout = self._started(handler, task)
            answer = await self._watchdog.within(child.call(request, f"task {task.type} {task.id}", report),
                                                 timeout, runner)
        return procpool.result(answer)

    # -- settling -----------------------------------------------------------------------------

    async def _settle(self, batch: list[Outcome]) -> int:
        """Settle a batch, one script call per queue; return how many were stale."""
        stale = 0
        for name, queue in self.queues.items():
            mine = [o for o in batch if o.task.queue == name]
            if mine:
                reported = self.progress.reported
                progressed = [o.task.id for o in mine if o.task.id in reported] if reported else []
                stale += (await queue.settle(self.id, mine, self._retentions, progressed))[1]
        return stale

    async def _settler(self) -> None:
        # Never let the settler die, whatever the error (uvloop raises RuntimeError writing
        # to a connection Redis just closed): its results would wait for ever while the
        # heartbeat keeps the reaper away from their tasks.
        outage = Outage("settler", log, give_up=NEVER, retry_other_errors=True)
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            while self._done:
                batch = self._done
                self._done = []
                self._settling = True
                try:
                    stale = await outage.call(functools.partial(self._settle, batch),
                                              note=f"{len(batch)} result(s) wait")
                except BaseException:  # cancelled: the batch stays unsettled
                    self._done = batch + self._done
                    raise
                finally:
                    self._settling = False
                if stale:
                    log.warning("%d result(s) dropped: their tasks were reclaimed while this worker "
                                "was taken for dead", stale)
                for o in batch:
                    self.held.pop(o.task.id, None)
                if self.cancels.asked or self.progress.pending:
                    for o in batch:
                        self.cancels.settled(o.task.id)
                        self.progress.forget(o.task.id)
                self.processed += len(batch)
                self._changed.set()


def _log_outcome(o: Outcome) -> None:
    """One DEBUG line a run (never INFO: at thousands of tasks a second it would be the log)."""
    said = "" if o.outcome == OK else f": {o.text}"
    log.debug("task %s (%s) %s in %d ms%s", o.task.id, o.task.type, o.outcome, o.run_ms, said,
              extra={"outcome": o.outcome, "duration_ms": o.run_ms})


def _ms_since(start: float) -> int:
    # Rounded, not truncated: asyncio may wake a sleeper up to its clock resolution early,
    # and a 10 ms sleep read as 9 ms would understate every run-time sum.
    return round((time.perf_counter() - start) * 1000)
