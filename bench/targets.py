"""The end-to-end targets, measured with ``reliq bench`` against real processes.

    .venv/bin/python bench/targets.py [--runs 3] [--tasks 100000]

One private redis-server (AOF off), then for each run:

- end to end: ``reliq work --processes auto`` (one process per core), and
  ``reliq bench --direct --batch 100`` enqueueing while they work: processing rate;
- latency: ``reliq serve`` and one ``reliq work``, ``reliq bench --rate 1000`` through
  POST /task: enqueue->start and enqueue->finish percentiles at 1,000 tasks/s open loop.

Each ``reliq bench`` call is printed, so every figure can be reproduced by hand.
Writes its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import machine, spread, write_section  # noqa: E402

from reliq.redis_server import RedisServer, answers, free_port  # noqa: E402

PY = sys.executable


@contextmanager
def process(args: list[str], port: int | None = None) -> Iterator[None]:
    """Run ``python -m reliq <args>`` until the block ends (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen([PY, "-m", "reliq", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while port is not None and not answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reliq {' '.join(args)} did not start")
            time.sleep(0.05)
        time.sleep(0.5)  # workers: registered and blocking on BLMOVE
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench(args: list[str], shown: list[str]) -> dict[str, Any]:
    """Run ``reliq bench --json <args>``; remember the command line for the report."""
    cmd = ["reliq", "bench", *args]
    shown.append(shlex.join(cmd))
    print("$", shlex.join(cmd), flush=True)
    out = subprocess.run([PY, "-m", "reliq", "bench", "--json", *args], capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"reliq bench failed ({out.returncode}): {out.stderr[-2000:]} {out.stdout[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks of the end-to-end run")
    parser.add_argument("--latency-tasks", type=int, default=10_000, help="tasks of the 1,000/s run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="reliq-targets-redis-"))
    server = RedisServer(data, aof=False).start()
    url = server.url
    e2e: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    shown: list[str] = []
    try:
        for run in range(args.runs):
            with process(["work", "--processes", "auto", "--redis-url", url, "--queue", "e2e",
                          "--log-level", "WARNING"]):
                e2e.append(bench(["--direct", "--batch", "100", "--tasks", str(args.tasks), "--redis-url", url,
                                  "--queue", "e2e"], shown))
            print(f"run {run + 1}: end to end {e2e[-1]['process_rate']:,.0f} tasks/s", flush=True)
            port = free_port()
            with process(["serve", "--redis-url", url, "--queue", "lat", "--port", str(port),
                          "--log-level", "WARNING"], port), \
                    process(["work", "--redis-url", url, "--queue", "lat", "--log-level", "WARNING"]):
                latency.append(bench(["--url", f"http://127.0.0.1:{port}", "--rate", "1000", "--tasks",
                                      str(args.latency_tasks), "--redis-url", url, "--queue", "lat"], shown))
            print(f"run {run + 1}: latency p50/p99 {latency[-1]['enqueue_to_start_ms']['p50']}"
                  f"/{latency[-1]['enqueue_to_start_ms']['p99']} ms", flush=True)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    rows = _rows(e2e, latency)
    print("\n".join(rows))
    if not args.no_write:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        general = (re.sub(r"127\.0\.0\.1:\d+ ", "127.0.0.1:$API_PORT ", c.replace(url, "$REDIS_URL")) for c in shown)
        commands = "\n".join(f"    {c}" for c in dict.fromkeys(general))
        write_section("targets", f"""## End to end and latency, {when}

Machine: {machine()}

{chr(10).join(rows)}

- {args.runs} runs; a private redis-server (AOF off) as $REDIS_URL, `reliq serve` on $API_PORT;
  `reliq work --processes auto` ({os.cpu_count()} processes) for the end-to-end run, `reliq serve`
  and one `reliq work` for latency.
  Latency is from the task records (Redis clock, ms resolution).
- Rerun all: `.venv/bin/python bench/targets.py --runs {args.runs} --tasks {args.tasks}`; the bench calls:

{commands}
""")


def _rows(e2e: list[dict[str, Any]], latency: list[dict[str, Any]]) -> list[str]:
    def col(reports: list[dict[str, Any]], *path: str, fmt: str = "{:,.0f}") -> str:
        values = []
        for r in reports:
            for key in path:
                r = r[key]
            values.append(float(r))  # type: ignore[arg-type]
        return spread(values, fmt)

    ms = "{:.0f}"
    return [
        "| measure | value |", "|---|---|",
        f"| end to end, --direct --batch 100 enqueue, processing tasks/s | {col(e2e, 'process_rate')} |",
        f"| ... its enqueue tasks/s (while the workers run) | {col(e2e, 'enqueue_rate')} |",
        "| 1,000 tasks/s open loop, POST /task: enqueue->start p50 ms | "
        f"{col(latency, 'enqueue_to_start_ms', 'p50', fmt=ms)} |",
        f"| ... enqueue->start p99 ms | {col(latency, 'enqueue_to_start_ms', 'p99', fmt=ms)} |",
        f"| ... enqueue->start max ms | {col(latency, 'enqueue_to_start_ms', 'max', fmt=ms)} |",
        f"| ... enqueue->finish p50 / p99 ms | {col(latency, 'enqueue_to_finish_ms', 'p50', fmt=ms)} / "
        f"{col(latency, 'enqueue_to_finish_ms', 'p99', fmt=ms)} |",
        f"| ... rate held (tasks/s accepted) | {col(latency, 'enqueue_rate')} |",
    ]


if __name__ == "__main__":
    main()
