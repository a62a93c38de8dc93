"""Periodic schedules: their definitions, what a round decides for each slot, and ``reliq.periodic``.

A schedule names a task (type, payload, options) and when it runs: ``every`` seconds or a
cron expression in a time zone (the slots: reliq/slots.py). It lives in Redis, one hash a
schedule (``keys.schedule``), so every worker sees the same ones; each worker runs the
enqueuer (reliq/periodic_enqueuer.py), and Redis decides which worker enqueues a slot:

- the hash holds a cursor, ``upto``: every slot up to it is decided (enqueued or skipped);
- a round reads the cursor and the Redis clock, and :func:`plan` decides the slots in
  (cursor, now]; ``schedule_fire.lua`` records the decision only if the cursor is still
  the one read and no slot lies ahead of the Redis clock, so one worker wins each slot
  whatever the number of workers or their clocks;
- the decided slots are then enqueued through ``enqueue.lua`` (the task id ``name:slot``,
  the idempotency key ``schedule:name:slot``), and the decision is marked done. A worker
  that dies in between leaves the decision in the hash (``firing``); the next round, on
  any worker, enqueues it again, which the idempotency key makes a no-op for the tasks
  already in. So a slot is enqueued exactly once, or counted as skipped.

Missed slots (no worker ran for a while): a slot found more than :data:`GRACE_MS` after its
time was missed; the schedule's ``missed`` policy says what becomes of those: ``skip`` them
(the default), run the newest ``once``, or ``catch_up`` the newest ``catch_up`` of them.
Slots found within the grace always run: a deploy or a Redis blip makes them late, not lost.
Every skipped slot is counted (``skipped`` on the schedule, ``schedule_skipped`` in /stats).

Code and run time: ``reliq.periodic`` declares schedules in an ``--app`` module; every
worker writes them at start (source ``code``). ``PUT /schedules/{name}`` and ``reliq
schedule add`` write one at run time (source ``api``). A run-time definition wins over the
code's of the same name until it is removed: an operator's change made during an incident
is not undone by the next deploy or autoscaled worker (the worker logs that the two differ).
Pausing is state, not definition: neither a deploy nor a redefinition resumes a schedule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import orjson
from croniter import CroniterBadDateError, CroniterError, croniter

from reliq.errors import InvalidSchedule, InvalidTask, ScheduleNotFound
from reliq.formats import SEP, ScheduleSource
from reliq.ids import new_id
from reliq.queue import TaskSpec, make_spec, text
from reliq.slots import MACROS, Cron, Interval, Timing, between, next_after

if TYPE_CHECKING:
    from reliq.queue import Queue

#: What a schedule's name may be: it is part of its tasks' ids and of its URL.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
#: What becomes of missed slots.
MISSED = ("skip", "once", "catch_up")
#: A slot found at most this late (ms) is on time: it runs whatever the policy (Sidekiq-cron's
#: reschedule grace is the same minute), so a fleet restarted within a minute loses no run.
GRACE_MS = 60_000
#: The most missed slots ``catch_up`` may run, and its default.
MAX_CATCH_UP = 1000
DEFAULT_CATCH_UP = 10
#: Shortest and longest interval, seconds.
MIN_EVERY_S = 1.0
MAX_EVERY_S = 366 * 24 * 3600.0
#: Missed slots one decision counts at most: a cron expression's are walked one by one, ~40 µs
#: each (croniter), so a decision holds the event loop ~0.1 s at most; a longer downtime is
#: decided in several, one after the other, each counted.
SCAN = 2_000
#: On-time slots one decision may hold: the grace over the shortest interval, and one.
_ON_TIME = int(GRACE_MS / 1000 / MIN_EVERY_S) + 1
#: Where a definition came from.
SOURCES = tuple(ScheduleSource)
#: Fields a definition may have (``PUT /schedules/{name}``, the stored JSON).
FIELDS = ("type", "payload", "cron", "every", "tz", "missed", "catch_up", "max_retries", "timeout_s")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated definition. Build it with :func:`make_schedule`."""

    name: str
    type: str
    payload: Any
    cron: str | None
    every: float | None
    tz: str
    missed: str
    catch_up: int
    max_retries: int | None
    timeout_s: float | None
    timing: Timing = field(compare=False, repr=False)

    def definition(self) -> dict[str, Any]:
        """The definition as JSON-ready fields (what ``PUT /schedules/{name}`` takes)."""
        return {"type": self.type, "payload": self.payload, "cron": self.cron, "every": self.every, "tz": self.tz,
                "missed": self.missed, "catch_up": self.catch_up or None, "max_retries": self.max_retries,
                "timeout_s": self.timeout_s}

    def to_json(self) -> bytes:
        """The definition as stored in Redis (keys sorted, so equal definitions are equal bytes)."""
        return orjson.dumps(self.definition(), option=orjson.OPT_SORT_KEYS)

    @property
    def version(self) -> str:
        """A digest of the definition: a decision holds only for the definition it was made from."""
        return hashlib.sha1(self.to_json()).hexdigest()[:16]

    @property
    def when(self) -> str:
        """The timing alone: a redefinition that changes it moves the cursor to now."""
        return f"every {self.every:g}" if self.every is not None else f"cron {self.cron} {self.tz}"

    def task(self, task_id: str, idempotency_key: str | None = None) -> TaskSpec:
        """The task this schedule enqueues, with ``task_id`` (retries left out: the type's, else the queue's)."""
        spec = make_spec(self.type, self.payload, max_retries=self.max_retries, timeout=self.timeout_s,
                         idempotency_key=idempotency_key)
        return dataclasses.replace(spec, id=task_id)

    def slot_task(self, slot_ms: int) -> TaskSpec:
        """The task of slot ``slot_ms``: id ``name:slot``, idempotency key ``schedule:name:slot``."""
        return self.task(slot_id(self.name, slot_ms), f"schedule:{self.name}:{slot_ms}")


def slot_id(name: str, slot_ms: int) -> str:
    """The task id of a schedule's slot."""
    return f"{name}:{slot_ms}"


def slot_of(task_id: str) -> int | None:
    """The slot (ms on the epoch) a periodic task was enqueued for, from its id; None for another id."""
    _, _, slot = task_id.rpartition(":")
    return int(slot) if slot.isdigit() else None


def check_name(name: Any) -> str:
    """``name`` if it can name a schedule; InvalidSchedule otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSchedule(f"a schedule's name must be 1 to 100 letters, digits, '_', '.' or '-', starting "
                              f"with a letter or digit, not {name!r}")
    return name


def zone(tz: Any) -> ZoneInfo:
    """The time zone called ``tz`` (an IANA name like Europe/Paris); InvalidSchedule otherwise."""
    if not isinstance(tz, str) or not 0 < len(tz) <= 100:
        raise InvalidSchedule(f"'tz' must be an IANA time zone name like 'Europe/Paris', not {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        hint = "" if available_timezones() else " (this machine has no time zone database: install tzdata)"
        raise InvalidSchedule(f"unknown time zone {tz!r}; use an IANA name like 'Europe/Paris'{hint}") from None


def _cron(expr: Any, tz: ZoneInfo) -> Cron:
    if not isinstance(expr, str) or not 0 < len(expr) <= 200:
        raise InvalidSchedule(f"'cron' must be a cron expression like '0 9 * * mon-fri', not {expr!r}")
    expr = " ".join(expr.split())
    if not (expr in MACROS or len(expr.split()) == 5):
        raise InvalidSchedule(f"'cron' must have five fields (minute hour day month weekday) or be one of "
                              f"{', '.join(MACROS)}, not {expr!r}; for seconds use 'every'")
    try:
        croniter(expr)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidSchedule(f"'cron' {expr!r} is not a valid cron expression: {exc}") from None
    timing = Cron(expr, tz)
    try:
        next_after(timing, 0)
    except CroniterBadDateError:
        raise InvalidSchedule(f"'cron' {expr!r} never fires") from None
    return timing


def _every(every: Any) -> Interval:
    if isinstance(every, bool) or not isinstance(every, int | float) or not MIN_EVERY_S <= every <= MAX_EVERY_S:
        raise InvalidSchedule(f"'every' must be a number of seconds from {MIN_EVERY_S:g} to {MAX_EVERY_S:g}")
    return Interval(round(every * 1000))  # to the millisecond: slots are ms on the epoch


def make_schedule(name: Any, *, type: Any, cron: Any = None, every: Any = None, payload: Any = None,
                  tz: Any = "UTC", missed: Any = "skip", catch_up: Any = None, max_retries: Any = None,
                  timeout_s: Any = None) -> Schedule:
    """Check a definition; raise InvalidSchedule saying what is wrong."""
    check_name(name)
    if (cron is None) == (every is None):
        raise InvalidSchedule(f"schedule {name!r} needs either 'cron' (an expression) or 'every' (seconds), "
                              "not both")
    zone_info = zone(tz)
    timing: Timing = _cron(cron, zone_info) if cron is not None else _every(every)
    if missed not in MISSED:
        raise InvalidSchedule(f"'missed' must be one of {', '.join(MISSED)}, not {missed!r}")
    if catch_up is not None and missed != "catch_up":
        raise InvalidSchedule("'catch_up' (how many missed slots to run) goes with missed='catch_up'")
    limit = DEFAULT_CATCH_UP if catch_up is None else catch_up
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CATCH_UP:
        raise InvalidSchedule(f"'catch_up' must be an integer from 1 to {MAX_CATCH_UP}")
    schedule = Schedule(name=name, type=type, payload=payload, cron=" ".join(cron.split()) if cron else None,
                        every=float(every) if every is not None else None, tz=tz, missed=missed,
                        catch_up=limit if missed == "catch_up" else 0, max_retries=max_retries,
                        timeout_s=timeout_s, timing=timing)
    try:
        schedule.task(slot_id(name, 0))  # the task's own checks: type, payload, retries, timeout
    except InvalidTask as exc:
        raise InvalidSchedule(f"schedule {name!r}: {exc}") from None
    return schedule


def from_definition(name: Any, body: Any) -> Schedule:
    """A schedule from a JSON object of :data:`FIELDS` (the API's body, a stored definition)."""
    if not isinstance(body, Mapping):
        raise InvalidSchedule("a schedule must be a JSON object with 'type' and 'cron' or 'every'")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidSchedule(f"unknown field(s) {', '.join(map(repr, unknown))}; a schedule takes "
                              f"{', '.join(FIELDS)}")
    if body.get("type") is None:
        raise InvalidSchedule("a schedule needs a 'type': the task type it enqueues")
    fields = {k: body[k] for k in FIELDS if body.get(k) is not None}
    return make_schedule(name, **fields)


def from_json(name: str, raw: bytes | str) -> Schedule:
    """A stored definition."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidSchedule(f"schedule {name!r}: stored definition is not JSON: {exc}") from None
    return from_definition(name, body)


# -- deciding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What a round decides for one schedule: slots to enqueue (oldest first), slots skipped, the new cursor.

    ``more``: the downtime held more slots than one decision counts; decide again at once.
    """

    run: list[int]
    skipped: int
    upto: int
    more: bool = False


def plan(schedule: Schedule, upto_ms: int, now_ms: int) -> Plan | None:
    """Decide the slots in (``upto_ms``, ``now_ms``] by the schedule's policy; None when none is due."""
    if now_ms <= upto_ms:
        return None
    cut = now_ms - GRACE_MS
    run: list[int] = []
    skipped = 0
    if cut > upto_ms:  # slots past the grace were missed: the policy keeps the newest few, or none
        keep = {"skip": 0, "once": 1, "catch_up": schedule.catch_up}[schedule.missed]
        tail = schedule.timing.tail(upto_ms, cut, keep, SCAN)
        if tail.more:
            return Plan([], tail.count, tail.upto, more=True)
        run, skipped = tail.newest, tail.count - len(tail.newest)
    run += between(schedule.timing, max(upto_ms, cut), now_ms, _ON_TIME)
    if not run and not skipped:
        return None
    return Plan(run, skipped, now_ms)


# -- what is read back --------------------------------------------------------------------------


class ScheduleInfo(TypedDict):
    """A schedule as the API, the CLI and the dashboard show it (times in ms on the epoch, and ISO)."""

    name: str
    queue: str
    type: str | None
    payload: Any
    cron: str | None
    every: float | None
    tz: str | None
    missed: str | None
    catch_up: int | None
    max_retries: int | None
    timeout_s: float | None
    source: str
    paused: bool
    paused_by: str | None
    paused_since: str | None
    #: The next slot that will be decided (None while paused): in the past when no worker runs.
    next_run: str | None
    next_run_ms: int | None
    #: The newest slot decided to run, and the newest task enqueued (a slot's or a trigger's).
    last_slot: str | None
    last_task_id: str | None
    last_task_state: str | None
    last_enqueued_at: str | None
    #: Slots enqueued, slots skipped, manual triggers, since the schedule was created.
    enqueued: int
    skipped: int
    triggered: int
    #: Slots decided whose tasks are still being enqueued (a worker died in between: the next round finishes).
    firing: int
    created_at: str | None
    updated_at: str | None
    #: Why the stored definition cannot be read (None when it can).
    error: str | None


def iso(ms: int | None) -> str | None:
    """Milliseconds on the epoch as an RFC 3339 time in UTC."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int(raw: str | None) -> int | None:
    return int(raw) if raw and raw.lstrip("-").isdigit() else None


def view(queue: str, name: str, f: Mapping[str, str], task_state: str, now_ms: int) -> ScheduleInfo:
    """The stored hash of a schedule (decoded fields) as :class:`ScheduleInfo`."""
    error = None
    definition: dict[str, Any] = dict.fromkeys(FIELDS)
    next_ms = None
    paused = f.get("paused")
    try:
        schedule = from_json(name, f.get("def", ""))
        definition = schedule.definition()
        if not paused:
            next_ms = next_after(schedule.timing, _int(f.get("upto")) or now_ms)
    except InvalidSchedule as exc:
        error = str(exc)
    since, _, by = (paused or "").partition(SEP)
    firing = f.get("firing")
    return ScheduleInfo(
        name=name, queue=queue, type=definition["type"], payload=definition["payload"], cron=definition["cron"],
        every=definition["every"], tz=definition["tz"], missed=definition["missed"],
        catch_up=definition["catch_up"] or None, max_retries=definition["max_retries"],
        timeout_s=definition["timeout_s"], source=f.get("source", ScheduleSource.API), paused=bool(paused),
        paused_by=by or None, paused_since=iso(_int(since)), next_run=iso(next_ms), next_run_ms=next_ms,
        last_slot=iso(_int(f.get("last_slot"))), last_task_id=f.get("last_task") or None,
        last_task_state=task_state or None, last_enqueued_at=iso(_int(f.get("last_at"))),
        enqueued=_int(f.get("enqueued")) or 0, skipped=_int(f.get("skipped")) or 0,
        triggered=_int(f.get("triggered")) or 0, firing=len(orjson.loads(firing)) if firing else 0,
        created_at=iso(_int(f.get("created_at"))), updated_at=iso(_int(f.get("updated_at"))), error=error,
    )


def decode_rows(raw: list[Any]) -> tuple[int, list[tuple[str, dict[str, str], str]]]:
    """``schedules.lua``'s reply: the Redis clock (ms) and (name, hash fields, last task's state) a schedule."""
    rows = []
    for i in range(1, len(raw), 3):
        flat = raw[i + 1]
        fields = {text(flat[j]): text(flat[j + 1]) for j in range(0, len(flat), 2)}
        rows.append((text(raw[i]), fields, text(raw[i + 2])))
    return int(raw[0]), rows


# -- declared in code ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Declared:
    """A schedule an ``--app`` module declared, and the queue it goes to (None: the worker's first)."""

    schedule: Schedule
    queue: str | None


#: The schedules ``reliq.periodic`` declared, by (queue, name): every worker writes them at start.
DECLARED: dict[tuple[str | None, str], Declared] = {}

F = TypeVar("F", bound=Callable[..., Any])


def periodic(cron: str | None = None, *, every: float | None = None, type: str | None = None,
             name: str | None = None, payload: Any = None, tz: str = "UTC", missed: str = "skip",
             catch_up: int | None = None, max_retries: int | None = None, timeout: float | None = None,
             queue: str | None = None) -> Callable[[F], F]:
    """Declare a periodic task: a cron expression (in ``tz``) or ``every`` seconds.

    ``reliq.periodic("0 9 * * mon-fri", type="send-report", tz="Europe/Paris", name="daily")``
    declares it at once; above ``@reliq.task`` it is a decorator, and ``type`` defaults to
    that handler's. ``name`` defaults to the type. ``missed`` says what a worker does with
    slots no worker was there for: ``skip`` (default), ``once``, or ``catch_up`` (the newest
    ``catch_up`` of them). Each slot runs once however many workers run, as a task with id
    ``name:slot`` (the slot in ms on the epoch: :func:`slot_of`). ``queue``: where the
    schedule and its tasks live (default: the first queue of the worker that writes it).

    A bad definition raises :class:`~reliq.errors.InvalidSchedule` here, when the module is
    imported.
    """

    def declare(task_type: str) -> None:
        schedule = make_schedule(name or task_type, type=task_type, cron=cron, every=every, payload=payload,
                                 tz=tz, missed=missed, catch_up=catch_up, max_retries=max_retries,
                                 timeout_s=timeout)
        key = (queue, schedule.name)
        if key in DECLARED and DECLARED[key].schedule != schedule:
            raise InvalidSchedule(f"schedule {schedule.name!r} is declared twice, differently")
        DECLARED[key] = Declared(schedule, queue)

    if type is not None:
        declare(type)

    def decorator(fn: F) -> F:
        task_type = getattr(fn, "name", None)
        if not isinstance(task_type, str) or not callable(getattr(fn, "enqueue", None)):
            raise InvalidSchedule("@reliq.periodic goes above @reliq.task (or give it type=...)")
        if type is None:
            declare(task_type)
        return fn

    return decorator



# -- what the API, the CLI and the monitor do -----------------------------------------------------


async def read(queue: Queue, name: str = "") -> list[ScheduleInfo]:
    """The queue's schedules (or the one called ``name``), by name, as shown to people."""
    now, rows = decode_rows(await queue.schedule_rows(name))
    return [view(queue.name, n, fields, state, now) for n, fields, state in rows]


class ScheduleCounts(TypedDict):
    """How many schedules a queue has (in /stats), and how many are paused or still enqueueing a decision."""

    total: int
    paused: int
    firing: int


def summary(views: list[ScheduleInfo]) -> ScheduleCounts:
    """The counts of ``views`` (the slots enqueued and skipped are counters of the queue's stats)."""
    return ScheduleCounts(total=len(views), paused=sum(1 for v in views if v["paused"]),
                          firing=sum(1 for v in views if v["firing"]))


async def read_one(queue: Queue, name: str) -> ScheduleInfo:
    """The schedule called ``name``; ScheduleNotFound when there is none."""
    found = await read(queue, check_name(name))
    if not found:
        raise ScheduleNotFound(name)
    return found[0]


async def trigger(queue: Queue, name: str) -> str:
    """Enqueue the schedule's task now, outside its slots (paused or not); return the task id.

    The id is ``name:manual:<new id>``; no slot is used up, and the next one runs as planned.
    """
    _, rows = decode_rows(await queue.schedule_rows(check_name(name)))
    if not rows:
        raise ScheduleNotFound(name)
    schedule = from_json(name, rows[0][1].get("def", ""))
    spec = schedule.task(f"{name}:manual:{new_id()}")
    home = (await queue.parts())[0]  # a schedule's tasks stay beside it, in partition 0 (docs/partitions.md)
    [(task_id, _)] = await home.enqueue_specs([spec])
    await queue.schedule_enqueued(name, b"", task_id)
    return task_id
