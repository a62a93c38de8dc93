"""Pause and resume: a whole queue, or one task type of it, held back fleet-wide.

The state is one Redis hash a queue (``keys.paused``: field ``*`` for the whole queue, or a
task type, -> ``paused|since_ms|by``), so every worker and monitor agrees and a restart of
any of them changes nothing. The claim script enforces it (``claim.lua``):

- whole queue: a claim returns nothing and a paused signal; the worker then neither
  spins nor is woken for the queue, and asks again every :data:`RECHECK_S` (or at once
  when the resume nudges). Pending tasks stay in pending, untouched. An id found in the
  worker's list meanwhile (a lost reply's) goes back, uncounted.
- one type: pending tasks of that type a claim meets are set aside into the type's held
  list (still ``pending``, counted in the queue's pending depth); :meth:`Queue.resume`
  moves them back to the taking end of pending, :data:`RESUME_CHUNK` a script call.

Tasks already claimed when a pause lands are not taken back: a running task finishes,
and a task a worker had claimed ahead of its runners may still start (the pause stops
claims, not starts). With nothing paused a claim pays one EXISTS.
"""

from __future__ import annotations

from typing import Any, TypedDict

from reliq.calls import text
from reliq.errors import InvalidTask
from reliq.formats import SEP, WHOLE_QUEUE, PauseState

#: The paused hash's field that pauses the whole queue.
QUEUE_FIELD = WHOLE_QUEUE
#: Held ids one resume script call moves back to pending (bounded work a call).
RESUME_CHUNK = 1000
#: How often a worker asks again whether a paused queue was resumed, seconds.
RECHECK_S = 0.5
#: Longest task type a pause may name (as a task's type: reliq.queue.MAX_TYPE_LEN).
MAX_TYPE_LEN = 200
#: Longest "by" (who paused) recorded.
MAX_BY = 200


class Pause(TypedDict):
    """One pause: since when (ms, Redis clock), for how long, by whom, what it holds aside."""

    since_ms: int
    paused_s: float
    by: str
    #: Pending tasks of a paused type set aside (0 for the whole queue: nothing moves).
    held: int
    #: Resumed, with held tasks still going back to pending (a resume cut short: resume again).
    resuming: bool


class PauseView(TypedDict):
    """What is paused in a queue: the whole queue (or None), and types by name."""

    queue: Pause | None
    types: dict[str, Pause]


def field(task_type: str | None) -> str:
    """The paused hash's field for ``task_type`` (None: the whole queue); InvalidTask if it cannot be one."""
    if task_type is None:
        return QUEUE_FIELD
    if not isinstance(task_type, str) or not task_type.strip() or len(task_type) > MAX_TYPE_LEN:
        raise InvalidTask(f"'type' must be a task type of 1 to {MAX_TYPE_LEN} characters")
    if task_type == QUEUE_FIELD:
        raise InvalidTask(f"'type' {task_type!r} cannot be paused on its own; leave it out to pause the queue")
    if any(ord(c) < 32 for c in task_type):
        raise InvalidTask("'type' must not contain control characters")
    return task_type


def check_by(by: Any) -> str:
    """Who paused, as recorded; InvalidTask when it is not a short string."""
    if not isinstance(by, str) or not 0 < len(by) <= MAX_BY:
        raise InvalidTask(f"'by' must be a string of 1 to {MAX_BY} characters")
    return by


def parse(triplets: list[Any], now_ms: int) -> PauseView:
    """The snapshot script's ``{field, value, held, ...}`` as a view, ages by the Redis clock ``now_ms``."""
    view = PauseView(queue=None, types={})
    for i in range(0, len(triplets), 3):
        name, value, held = text(triplets[i]), text(triplets[i + 1]), int(triplets[i + 2])
        state, _, rest = value.partition(SEP)
        since, _, by = rest.partition(SEP)
        since_ms = int(since or 0)
        pause = Pause(since_ms=since_ms, paused_s=max(0.0, (now_ms - since_ms) / 1000), by=by, held=held,
                      resuming=state == PauseState.RESUMING)
        if name == QUEUE_FIELD:
            view["queue"] = pause
        else:
            view["types"][name] = pause
    return view
