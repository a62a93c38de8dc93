"""Counting redis-server's instructions with valgrind's callgrind: shared by the bench scripts.

A redis-server runs under :func:`command`; :func:`dump` writes its counters so far to a
new file (``<out>.1``, ``<out>.2`` …, each holding what ran since the previous dump);
:func:`instructions` reads one of them. Counts are exact and repeatable whatever the
machine does, unlike CPU time on a shared host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def require() -> None:
    """Exit with a clear message when valgrind is not installed."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("needs valgrind: apt-get install valgrind")


def command(out: Path) -> tuple[str, ...]:
    """The command to run redis-server under, writing its counters to ``out``.N."""
    return ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")


def dump(pid: int, label: str) -> None:
    """Write the counters of the process ``pid`` since its last dump (or start) to its next file."""
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def instructions(out: Path, n: int) -> int:
    """Instructions counted in dump ``n`` (1 = the first) of the process writing to ``out``."""
    for line in Path(f"{out}.{n}").read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}.{n}")
