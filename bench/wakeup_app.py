"""The task type of bench/wakeups.py: ``stamp`` tells the benchmark, at once, when it started.

It sends ``"<n> <time.time()>"`` as one datagram to the Unix socket the benchmark named in
``RELIQ_BENCH_STAMPS`` (loaded with ``--app wakeup_app``, ``bench/`` on PYTHONPATH: any
reliq tree can serve it, so an older one is measured the same way).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from reliq import task

_SOCK = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
_TO = os.environ.get("RELIQ_BENCH_STAMPS", "")


@task("stamp")
async def stamp(payload: Any) -> None:
    """Say when this attempt started (the worker's clock, the benchmark's too: one machine)."""
    _SOCK.sendto(f"{payload['n']} {time.time()}".encode(), _TO)
