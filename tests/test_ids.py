"""Task ids (reliq/ids.py): 26 Crockford base32 characters that sort by creation time,
unique across threads and across a fork."""

from __future__ import annotations

import os
import threading
import time
import warnings
from types import SimpleNamespace

import pytest

from reliq import ids
from reliq.ids import new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ms(task_id: str) -> int:
    """The milliseconds the first 10 characters (48 bits) carry."""
    value = 0
    for ch in task_id[:10]:
        value = value * 32 + CROCKFORD.index(ch)
    return value


def test_an_id_is_26_crockford_characters_starting_with_its_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    task_id = new_id()
    after = time.time_ns() // 1_000_000
    assert len(task_id) == 26 and set(task_id) <= set(CROCKFORD)
    assert before <= _ms(task_id) <= after


def test_ids_made_within_one_millisecond_still_sort_in_order() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert len({_ms(i) for i in ids}) < len(ids)  # many shared a millisecond, and still sorted


def test_ids_made_by_many_threads_at_once_never_repeat() -> None:
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(made))

    def make(mine: list[str]) -> None:
        start.wait()
        mine.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(mine,)) for mine in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in made for i in mine]
    assert len(set(every)) == len(every) == 16000
    assert all(mine == sorted(mine) for mine in made)  # each thread's ids in its own order


def test_a_forked_child_does_not_continue_the_parents_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuing it would give parent and child the same next ids within one millisecond."""
    frozen = time.time_ns()
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: frozen))  # all in one millisecond
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads about: the child only makes ids
        last = new_id()
        pid = os.fork()
    if pid == 0:  # the child
        os.write(write, "".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    parent = [new_id() for _ in range(100)]
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = [text[i : i + 26] for i in range(0, len(text), 26)]
    assert len(child) == 100 and child == sorted(child)
    assert not set(child) & set(parent) and last not in child
