"""Flow limits of a task type: a fleet-wide rate limit and a per-key concurrency, per queue.

A type's limits come in two layers, kept in the queue's ``limit-sources`` hash:

- ``declared``: what ``@reliq.task(..., rate_limit=, key_concurrency=, ordered=)`` says,
  written by every worker at start-up (the last worker to start wins: in a rolling deploy
  the new code's declaration takes over as its workers come up);
- ``set``: what an operator set at run time (``PUT /limits/{type}``, ``reliq limit set``).
  Field by field it wins over the declared layer until cleared (``DELETE /limits/{type}``,
  ``reliq limit clear``); a field set to ``null`` switches the declared one off.

``limit.lua`` merges the two and writes the result, one compact string a limited type, to
the ``limits`` hash the claim script reads (see docs/flow-control.md). A type with no
limit has no field there, and a queue with no limited type no hash: its claims pay nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypedDict

from reliq.errors import InvalidTask

#: Most tasks a rate may allow in its period, and the largest burst.
MAX_COUNT = 1_000_000_000
MAX_BURST = 1_000_000
#: Longest period a rate may have: a day.
MAX_PERIOD_MS = 86_400_000
#: Largest key concurrency (a bound on what one key may hold, not a cost: slots are counters).
MAX_KEY_CONCURRENCY = 100_000
#: Fields a layer may have.
FIELDS = ("rate", "key_concurrency", "ordered")
#: Longest task key (the ``key`` of a task), like an idempotency key.
MAX_KEY_LEN = 200

_UNITS = {"s": 1000, "sec": 1000, "second": 1000, "m": 60_000, "min": 60_000, "minute": 60_000,
          "h": 3_600_000, "hour": 3_600_000, "d": 86_400_000, "day": 86_400_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+?)s?\s*(?:burst\s+(\d+))?\s*$")


#: What a rate without a burst lets start at once after a quiet spell: this many ms of it (at
#: least one task). So a claim a little late (a worker waking a few ms after the token was
#: due) does not lose the token; and while tasks of the type wait set aside, tokens up to a
#: second late are kept (claim.lua: CATCHUP_MS), so a fleet keeps the rate over time.
#: ``burst 1`` spaces tasks strictly instead. Kept in claim.lua too (DEFAULT_TOLERANCE_MS).
DEFAULT_TOLERANCE_MS = 100


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` tasks every ``period_ms``, spread evenly, with up to ``burst`` at once after a quiet spell.

    ``burst`` 0: the default, :data:`DEFAULT_TOLERANCE_MS` worth of the rate.
    """

    count: int
    period_ms: int
    burst: int = 0

    @classmethod
    def parse(cls, text: Any) -> Rate:
        """``"100/s"``, ``"6/m"``, ``"1000/h"``, ``"5/10s"``, with an optional ``" burst 20"``; InvalidTask if not."""
        m = _RATE.match(text.lower()) if isinstance(text, str) else None
        if not m or m.group(3) not in _UNITS:
            raise InvalidTask(f"a rate is like '100/s', '6/m', '1000/h' or '5/10s', optionally with ' burst 20', "
                              f"not {text!r}")
        count, every, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
        burst = int(m.group(4)) if m.group(4) is not None else 0
        period = every * _UNITS[unit]
        if not 1 <= count <= MAX_COUNT:
            raise InvalidTask(f"a rate allows 1 to {MAX_COUNT:,} tasks a period, not {count}")
        if not 0 < period <= MAX_PERIOD_MS:
            raise InvalidTask(f"a rate's period is 1 s to a day, not {text!r}")
        if m.group(4) is not None and not 1 <= burst <= MAX_BURST:
            raise InvalidTask(f"a burst is 1 to {MAX_BURST:,} tasks, not {burst}")
        return cls(count, period, burst)

    def text(self) -> str:
        """The rate as :meth:`parse` reads it, in its largest whole unit."""
        unit, ms = next((u, ms) for u, ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000))
                        if self.period_ms % ms == 0)
        every = self.period_ms // ms
        out = f"{self.count}/{'' if every == 1 else every}{unit}"
        return out + (f" burst {self.burst}" if self.burst else "")

    def per_s(self) -> float:
        """The steady rate, tasks a second."""
        return self.count * 1000 / self.period_ms


class Layer(TypedDict, total=False):
    """One layer of a type's limits as stored (JSON): a field left out is not said; ``None`` says "none"."""

    rate: list[int] | None  # [count, period_ms, burst]
    key_concurrency: int | None
    ordered: bool | None


class LimitView(TypedDict):
    """A type's limits as ``GET /limits`` and ``reliq limit show`` give them."""

    rate: str | None
    rate_per_s: float | None
    key_concurrency: int | None
    ordered: bool
    #: The two layers (``rate`` as text); the effective values above merge them.
    declared: dict[str, Any]
    set: dict[str, Any]
    #: Tasks (and keys) of the type set aside until its next token, or a hold, is due.
    limited: int
    #: Seconds until they are due (None: nothing set aside).
    due_in_s: float | None


def check_key(key: Any) -> str:
    """A task's ``key`` (a customer, a merchant, an endpoint); InvalidTask if it cannot be one."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
        raise InvalidTask(f"'key' must be a string of 1 to {MAX_KEY_LEN} characters")
    if any(ord(c) < 32 for c in key):
        raise InvalidTask("'key' must not contain control characters")
    return key


def _key_concurrency(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEY_CONCURRENCY:
        raise InvalidTask(f"'key_concurrency' must be an integer from 1 to {MAX_KEY_CONCURRENCY:,} (or null)")
    return value


def layer(fields: Any) -> Layer:
    """A layer from the API's or the CLI's fields (``rate`` as text); InvalidTask saying what is wrong."""
    if not isinstance(fields, dict) or not fields:
        raise InvalidTask(f"limits are a JSON object with one or more of {', '.join(FIELDS)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidTask(f"unknown limit field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    out = Layer()
    if "rate" in fields:
        rate = None if fields["rate"] is None else Rate.parse(fields["rate"])
        out["rate"] = None if rate is None else [rate.count, rate.period_ms, rate.burst]
    if "key_concurrency" in fields:
        out["key_concurrency"] = _key_concurrency(fields["key_concurrency"])
    if "ordered" in fields:
        ordered = fields["ordered"]
        if ordered is not None and not isinstance(ordered, bool):
            raise InvalidTask("'ordered' must be true, false or null")
        out["ordered"] = ordered
    return out


def declared(rate_limit: str | None, key_concurrency: int | None, ordered: bool) -> Layer | None:
    """What ``@reliq.task`` declares (None: nothing); ValueError for options that cannot be."""
    try:
        fields: dict[str, Any] = {}
        if rate_limit is not None:
            fields["rate"] = rate_limit
        if key_concurrency is not None:
            fields["key_concurrency"] = key_concurrency
        if ordered:
            fields["ordered"] = True
        out = layer(fields) if fields else None
        check_ordered(out or Layer())
    except InvalidTask as exc:
        raise ValueError(str(exc)) from None
    return out


def merged(declared_: Layer, set_: Layer) -> Layer:
    """The effective limits: each field from ``set_`` when it says it, else from ``declared_``."""
    out = Layer()
    for name in FIELDS:
        value = set_[name] if name in set_ else declared_.get(name)  # type: ignore[literal-required]
        out[name] = value  # type: ignore[literal-required]
    return out


def check_ordered(effective: Layer) -> None:
    """``ordered`` runs one task of a key at a time: refuse it with any other key concurrency."""
    if effective.get("ordered") and effective.get("key_concurrency") != 1:
        raise InvalidTask("'ordered' needs 'key_concurrency' 1 (one task of a key at a time, in enqueue order); "
                          f"the key concurrency would be {effective.get('key_concurrency')}")


def shown(raw: Layer) -> dict[str, Any]:
    """A stored layer as the API shows it: the rate as text."""
    out: dict[str, Any] = dict(raw)
    if out.get("rate"):
        out["rate"] = Rate(*out["rate"]).text()
    return out


def view(sources: dict[str, Layer], limited: int, due_in_s: float | None) -> LimitView:
    """A type's view from its stored sources (``{"declared": Layer, "set": Layer}``) and live state."""
    d, s = sources.get("declared") or Layer(), sources.get("set") or Layer()
    eff = merged(d, s)
    count_period_burst = eff.get("rate")
    rate = Rate(*count_period_burst) if count_period_burst else None
    return LimitView(rate=rate.text() if rate else None, rate_per_s=rate.per_s() if rate else None,
                     key_concurrency=eff.get("key_concurrency"), ordered=bool(eff.get("ordered")),
                     declared=shown(d), set=shown(s), limited=limited, due_in_s=due_in_s)
