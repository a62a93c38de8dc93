"""Shared by the bench scripts: the machine description, run statistics, RESULTS.md sections.

Each script owns one section of ``bench/RESULTS.md`` (between ``<!-- name -->`` and
``<!-- /name -->``) and rewrites only that one, so the scripts can run separately.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# reliq benchmark results

Written by the scripts in `bench/` (each rewrites its own section). Every figure is the
median [min-max] of its runs. The machine is shared and has 2 cores: figures from a busy
machine are noisy; re-run on a quiet one before quoting them.
"""


def machine() -> str:
    """One line: CPU, cores, memory, OS, Python and Redis versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        redis = "?"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; Redis {redis.removeprefix('v=')}")


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median [min-max]`` of ``values``."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def spread_table(results: Mapping[str, Sequence[Mapping[str, float]]],
                 columns: Sequence[tuple[str, str]]) -> str:
    """A markdown row a name of ``results``: ``spread`` of each ``(field, fmt)`` over its runs."""
    return "\n".join(f"| {name} | " + " | ".join(spread([r[f] for r in runs], fmt) for f, fmt in columns) + " |"
                     for name, runs in results.items())


def write_section(name: str, body: str) -> Path:
    """Replace (or append) section ``name`` of RESULTS.md with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    return RESULTS


def calls_and_runs(doc: str | None, calls: int, runs: int) -> argparse.Namespace:
    """The flags of a bench that times ``--calls`` calls ``--runs`` times (``--no-write``: RESULTS.md left alone)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=calls)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    return parser.parse_args()
