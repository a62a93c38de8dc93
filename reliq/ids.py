"""Task ids: unique across producers and sorting by creation time (ULID layout).

48 bits of milliseconds then 80 random bits, in Crockford base32 (26 characters).
Within one process ids generated in the same millisecond still sort in order, because
the random part is incremented instead of drawn again.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 characters
_SHIFTS = range(120, -1, -10)


def _encode(ms: int, rand: int) -> str:
    """ms (48 bits) then rand (80 bits) as 26 Crockford base32 characters.

    Two characters a lookup: a loop of one character a step was a fifth of the API's
    CPU under POST /tasks.
    """
    value = (ms << 80) | rand
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_id() -> str:
    """A new task id, greater than every id this process made before."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        return _encode(ms, _last_rand)


def _after_fork_in_child() -> None:
    """A forked child starts afresh: the parent's lock may have been held by a thread the
    child does not have (it would never be released), and continuing the parent's
    sequence would give both processes the same next ids within one millisecond."""
    global _lock, _last_ms, _last_rand
    _lock = threading.Lock()
    _last_ms = _last_rand = 0


os.register_at_fork(after_in_child=_after_fork_in_child)

