"""When a periodic task is due: the slots of an interval or of a cron expression in a time zone.

A *slot* is one instant (ms on the epoch) at which a schedule runs once. Slots are a pure
function of the definition, so every worker computes the same ones and Redis only has to
decide which were enqueued already (reliq/schedules.py, ``schedule_fire.lua``).

- **Intervals** (``every=30``) are aligned on the epoch: every 30 s means :00 and :30 of
  each minute, whoever computes it and whenever it was declared.
- **Cron expressions** (five fields, or ``@daily`` and friends) are read by ``croniter``
  on the local wall clock of the schedule's time zone, then turned into instants:

  * a wall time that does not exist (spring forward: 02:30 on the last Sunday of March in
    Europe/Paris) runs at the first instant after the gap (03:00 CEST), as cron does;
    several slots in one gap are one run;
  * a wall time that happens twice (fall back: 02:30 on the last Sunday of October) runs
    once, at its first occurrence (02:30 CEST), as cron does.

  So ``0 * * * *`` runs 23 times on the spring day and 24 on the autumn one: it follows
  the clock on the wall. A schedule that must follow elapsed time uses ``every=3600``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

#: The macros a cron expression may be instead of five fields.
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


@dataclass(frozen=True, slots=True)
class Tail:
    """What lies in a span of slots: how many, the newest ``keep`` of them, and where the scan stopped.

    ``more``: the span holds more slots than one scan looks at; ``count`` slots up to and
    including ``upto`` were seen, the rest of the span starts after ``upto``.
    """

    count: int
    newest: list[int]
    upto: int
    more: bool = False


class Timing(Protocol):
    """The slots of a schedule."""

    def after(self, t_ms: int) -> Iterator[int]:
        """Every slot later than ``t_ms``, in order (strictly increasing)."""

    def tail(self, after_ms: int, upto_ms: int, keep: int, cap: int) -> Tail:
        """The slots in (``after_ms``, ``upto_ms``]: count them, keep the newest ``keep``.

        Looks at no more than ``cap + keep`` slots; when there are more, the first ``cap``
        are counted (``more`` set, ``upto`` at the last of them) and none are kept.
        """


def between(timing: Timing, after_ms: int, upto_ms: int, limit: int) -> list[int]:
    """At most ``limit`` slots in (``after_ms``, ``upto_ms``], oldest first."""
    out: list[int] = []
    if limit <= 0:
        return out
    for slot in timing.after(after_ms):
        if slot > upto_ms:
            break
        out.append(slot)
        if len(out) >= limit:
            break
    return out


def next_after(timing: Timing, t_ms: int) -> int:
    """The first slot later than ``t_ms``."""
    return next(iter(timing.after(t_ms)))


@dataclass(frozen=True, slots=True)
class Interval:
    """Every ``every_ms`` milliseconds, aligned on the epoch."""

    every_ms: int

    def after(self, t_ms: int) -> Iterator[int]:
        """Slots later than ``t_ms``."""
        slot = (t_ms // self.every_ms + 1) * self.every_ms
        while True:
            yield slot
            slot += self.every_ms

    def tail(self, after_ms: int, upto_ms: int, keep: int, cap: int) -> Tail:
        """Counted by arithmetic, whatever the span: no cap needed."""
        e = self.every_ms
        first, last = (after_ms // e + 1) * e, (upto_ms // e) * e
        count = max(0, (last - first) // e + 1)
        newest = [last - i * e for i in range(min(keep, count) - 1, -1, -1)]
        return Tail(count, newest, max(after_ms, upto_ms))


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression read on the wall clock of time zone ``tz`` (see the module's DST rules)."""

    expr: str
    tz: ZoneInfo

    def after(self, t_ms: int) -> Iterator[int]:
        """Slots later than ``t_ms``, each wall time mapped to its instant once."""
        # From the wall time of t_ms on. In the second pass of a repeated hour, the wall
        # times still ahead on that pass ran in the first: they map below t_ms, dropped here.
        wall = datetime.fromtimestamp(t_ms / 1000, self.tz).replace(tzinfo=None)
        walls = croniter(self.expr, wall - timedelta(microseconds=1))
        last = t_ms
        while True:
            slot = self.instant(walls.get_next(datetime))
            if slot > last:
                last = slot
                yield slot

    def instant(self, wall: datetime) -> int:
        """The instant (ms) a wall time of this zone runs at: its first occurrence; after a gap, its end."""
        first = wall.replace(tzinfo=self.tz, fold=0)
        utc = first.astimezone(UTC)
        if utc.astimezone(self.tz).replace(tzinfo=None) == wall:
            return _ms(utc)
        # In a gap, fold=0 reads the wall time with the offset before the change and fold=1
        # with the one after: the change lies between the two; find it to the second.
        lo = int(wall.replace(tzinfo=self.tz, fold=1).timestamp())
        hi = int(first.timestamp())
        after = datetime.fromtimestamp(hi, self.tz).utcoffset()
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self.tz).utcoffset() == after:
                hi = mid
            else:
                lo = mid
        return hi * 1000

    def tail(self, after_ms: int, upto_ms: int, keep: int, cap: int) -> Tail:
        """Counted by walking the slots, at most ``cap + keep`` of them a call."""
        newest: deque[int] = deque(maxlen=max(keep, 1))
        seen: list[int] = []  # the first cap slots, in case the span holds more
        count = 0
        for slot in self.after(after_ms):
            if slot > upto_ms:
                break
            count += 1
            if count <= cap:
                seen.append(slot)
            newest.append(slot)
            if count > cap + keep:
                return Tail(cap, [], seen[-1], more=True)
        return Tail(count, list(newest)[-keep:] if keep else [], max(after_ms, upto_ms))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
