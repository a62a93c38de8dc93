"""Priority within a queue: 0 (lowest) to 9 (highest), 5 by default, with aging.

Where a pending task waits: one of the default priority in the queue's ``pending`` list,
exactly as before priorities existed, so a queue that never uses them runs the old path
(the claim pays one EXISTS a call, not a task, to learn that no other list exists). Each
other priority has a list of its own (``keys.priority_list``), FIFO like ``pending``.

The claim script merges the heads of the lists by an *effective* time::

    effective = queued_at - (priority - 5) * step,    step = aging / 9

and takes the smallest first: higher priority first, FIFO within a priority, and a task
of priority p is overtaken only by tasks of priority q > p enqueued less than
``(q - p) * step`` after it, that is at most ``aging * (9 - p) / 9`` after it (the whole
``aging`` for priority 0 against 9). Aging is a worker setting
(:attr:`reliq.settings.Settings.priority_aging`): it is applied when a claim compares
the lists, so changing it reorders what is already waiting. 0 turns it off: strict
priorities, where a steady stream of higher ones can hold a low one back for ever.

A worker with nothing to do is woken when ``pending`` gets its first id
(reliq/worker/nudges.py). A script that puts a task in another priority's list while
``pending`` is empty therefore pushes :data:`WAKE` there (and nudges): the claim drops
the mark (an id with no record, like a cancelled one). Only an empty ``pending`` gets one,
so at most one mark waits at a time, and counts leave it out (snapshot.lua).
"""

from __future__ import annotations

from typing import Any

from reliq.errors import InvalidTask
from reliq.formats import WAKE_MARK

LOWEST = 0
HIGHEST = 9
#: The priority of a task that names none; such tasks wait in ``pending`` itself.
DEFAULT = 5
#: Every priority, lowest first.
LEVELS = tuple(range(LOWEST, HIGHEST + 1))
#: The priorities with lists of their own (all but the default).
OTHERS = tuple(p for p in LEVELS if p != DEFAULT)
#: What a script pushes to an empty ``pending`` to wake a blocked worker for a task of
#: another priority (defined with the other formats the scripts share).
WAKE = WAKE_MARK
#: The step when aging is off: one priority outweighs any wait (about 300 years in ms).
STRICT_STEP_MS = 10**13


def check(value: Any) -> int:
    """``value`` as a priority (None: the default); InvalidTask saying what is wrong."""
    if value is None:
        return DEFAULT
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer: 7.0 is one
    if isinstance(value, bool) or not isinstance(value, int) or not LOWEST <= value <= HIGHEST:
        raise InvalidTask(f"'priority' must be an integer from {LOWEST} (lowest) to {HIGHEST} (highest); "
                          f"{DEFAULT} by default")
    return value


def step_ms(aging_s: float) -> str:
    """What one priority step is worth in the claim's comparison, in ms, as the claim's ARGV takes it."""
    if aging_s <= 0:
        return str(STRICT_STEP_MS)
    return repr(aging_s * 1000 / (HIGHEST - LOWEST))


def by_priority(counts: dict[int, int]) -> dict[str, int]:
    """Pending tasks a priority, every level present (as /stats shows them), highest first."""
    return {str(p): counts.get(p, 0) for p in reversed(LEVELS)}
