"""free_port(): no two callers of the machine get the same port (parallel test processes)."""

from __future__ import annotations

import itertools
import multiprocessing
import socket
from pathlib import Path

import pytest

from reliq import redis_server
from reliq.redis_server import free_port


def _ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def test_processes_asking_at_once_get_distinct_bindable_ports_below_the_ephemeral_range(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        got = list(itertools.chain.from_iterable(pool.map(_ports, [80] * 4)))
    assert len(set(got)) == len(got) == 320
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(redis_server.PORT_LOW <= p < low for p in got), sorted(got)
    for port in got[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_handed_out_is_not_handed_out_again_and_without_a_ledger_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_server, "PORT_LEDGER", tmp_path / "ledger")
    picks = iter([23456, 23456, 23456, 23457])
    monkeypatch.setattr(redis_server.random, "randrange", lambda low, high: next(picks))
    assert [free_port(), free_port()] == [23456, 23457]
    assert (tmp_path / "ledger").read_text().split()[::2] == ["23456", "23457"]
    monkeypatch.setattr(redis_server, "PORT_LEDGER", tmp_path / "no" / "such" / "dir")
    assert free_port() >= int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
