"""reliq against saq, arq, Celery, RQ and Dramatiq: the same no-op workload, one Redis, one run.

    .venv/bin/python bench/peers/run.py [--tasks 20000] [--runs 3] [--only reliq,saq]

Each peer is installed (first run only) into its own venv under ``bench/.venv-peers/``
from the pins in ``requirements.txt``. One private ``redis-server`` on a free port serves
every library. For each library, worker layout (1 process, then one per core) and run:
the database is flushed, N no-op tasks are enqueued by the library's own client (timed),
then the worker processes start and run them all. Each no-op counts itself in its worker
process (apps/harness.py), so processing rate = N / (last finish - first start) for every
library alike, worker start-up excluded. Prints a table and writes its section of
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
APPS = HERE / "apps"
VENVS = HERE.parent / ".venv-peers"
sys.path.insert(0, str(HERE.parent))

from report import machine, spread, write_section  # noqa: E402

from reliq.redis_server import RedisServer  # noqa: E402

LIBS = ("reliq", "saq", "arq", "celery", "rq", "dramatiq")
#: Enqueue concurrency of the async clients (the sync ones enqueue one after another).
ENQUEUE_CONCURRENCY = 64


def requirement(lib: str) -> list[str]:
    """The pip arguments of ``lib``'s line in requirements.txt."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        name = line.split("[")[0].split("=")[0].strip()
        if name == lib:
            return line.split()
    raise SystemExit(f"{lib} is not pinned in {HERE / 'requirements.txt'}")


def python_of(lib: str) -> Path:
    """The interpreter that runs ``lib`` (reliq's own venv for reliq)."""
    if lib == "reliq":
        return Path(sys.executable)
    return VENVS / lib / "bin" / "python"


def install(lib: str, console: Console) -> None:
    """Create ``lib``'s venv and install its pin, once."""
    py = python_of(lib)
    if lib == "reliq" or py.exists():
        return
    console.print(f"installing {' '.join(requirement(lib))} into {py.parent.parent}")
    subprocess.run([sys.executable, "-m", "venv", str(py.parent.parent)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *requirement(lib), "hiredis"], check=True)


def worker_command(lib: str, url: str, index: int) -> list[str]:
    """One worker process of ``lib`` at concurrency 64 (RQ: one job at a time)."""
    py = str(python_of(lib))
    bin_ = str(python_of(lib).parent)
    return {
        "reliq": [py, "-m", "reliq", "work", "--redis-url", url, "--queue", "bench", "--app", "reliq_app",
                  "--concurrency", "64", "--log-level", "WARNING"],
        "saq": [f"{bin_}/saq", "saq_app.settings"],
        # arq's CLI logs every job at INFO; run its worker with logging at WARNING instead.
        "arq": [py, "-c", "import logging, arq_app; from arq.worker import run_worker; "
                "logging.basicConfig(level=logging.WARNING); run_worker(arq_app.WorkerSettings)"],
        "celery": [f"{bin_}/celery", "-A", "celery_app", "worker", "--pool", "threads", "--concurrency", "64",
                   "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-n", f"bench{index}@%h"],
        "rq": [f"{bin_}/rq", "worker", "--worker-class", "rq.worker.SimpleWorker", "--url", url, "--quiet",
               "--name", f"bench{index}-{os.getpid()}", "bench"],
        "dramatiq": [f"{bin_}/dramatiq", "dramatiq_app", "--processes", "1", "--threads", "64",
                     "--queues", "bench"],
    }[lib]


@dataclass
class Row:
    """All runs of one library."""

    lib: str
    version: str = "?"
    enqueue: list[float] = field(default_factory=list)
    process: dict[int, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Run:
    """Runs the workload of each library against one private redis-server."""

    def __init__(self, server: RedisServer, tasks: int, console: Console) -> None:
        self.server = server
        self.tasks = tasks
        self.console = console
        self.redis = redis.Redis.from_url(server.url)
        self.counts = Path(tempfile.mkdtemp(prefix="reliq-peers-"))

    def env(self) -> dict[str, str]:
        env = dict(os.environ, BENCH_REDIS_URL=self.server.url, BENCH_COUNT_DIR=str(self.counts),
                   PYTHONPATH=str(APPS))
        env.pop("VIRTUAL_ENV", None)
        return env

    def enqueue(self, lib: str) -> tuple[float, str]:
        """Enqueue the tasks with ``lib``'s client; (tasks/s, library version)."""
        out = subprocess.run([str(python_of(lib)), str(APPS / "enqueue.py"), lib, str(self.tasks),
                              str(ENQUEUE_CONCURRENCY)], env=self.env(), cwd=APPS, capture_output=True,
                             text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"enqueue failed: {out.stderr.strip()[-2000:]}")
        reply = json.loads(out.stdout.strip().splitlines()[-1])
        return self.tasks / reply["seconds"], reply["version"]

    def process(self, lib: str, processes: int) -> float:
        """Start the workers, wait for every task to have run; tasks/s."""
        for f in self.counts.iterdir():
            f.unlink()
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(processes)]
            procs = [subprocess.Popen(worker_command(lib, self.server.url, i), env=self.env(), cwd=APPS,
                                      stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True)
                     for i in range(processes)]
            try:
                return self._wait(procs, logs)
            finally:
                _stop(procs)

    def _wait(self, procs: list[subprocess.Popen[bytes]], logs: list[IO[bytes]]) -> float:
        deadline = time.monotonic() + max(120.0, self.tasks / 100)
        while time.monotonic() < deadline:
            count, first, last = self._read_counts()
            if count >= self.tasks:
                return count / (last - first)
            for p, log in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"worker exited {p.returncode}: {log.read().decode()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"only {self._read_counts()[0]} of {self.tasks} tasks ran in time")

    def _read_counts(self) -> tuple[int, float, float]:
        count, first, last = 0, float("inf"), 0.0
        for f in self.counts.glob("count.*[0-9]"):
            try:
                c, a, b = f.read_text().split()
            except (OSError, ValueError):
                continue
            count += int(c)
            first, last = min(first, float(a)), max(last, float(b))
        return count, first, last

    def one(self, row: Row, processes: int) -> None:
        """One run: flush, enqueue, process."""
        self.redis.flushall()
        rate, row.version = self.enqueue(row.lib)
        if processes == 1:
            row.enqueue.append(rate)
        row.process.setdefault(processes, []).append(self.process(row.lib, processes))


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker's process group (workers may have children), then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def table(rows: list[Row], layouts: list[int]) -> tuple[Table, str]:
    """The results as a rich table and as markdown."""
    ref = next((r for r in rows if r.lib == "reliq"), None)
    heads = ["library", "version", "enqueue tasks/s"]
    for n in layouts:
        heads += [f"process tasks/s, {n} proc", f"reliq ÷ it, {n} proc"]
    t = Table(*heads)
    md = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r.lib, r.version, spread(r.enqueue)]
        for n in layouts:
            runs = r.process.get(n, [])
            cells.append(spread(runs))
            mine = sorted(runs)[len(runs) // 2] if runs else 0
            theirs = ref.process.get(n, []) if ref else []
            base = sorted(theirs)[len(theirs) // 2] if theirs else 0
            cells.append(f"{base / mine:.1f}x" if mine and base else "-")
        if r.failures:
            cells[0] += " (!)"
        t.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    return t, "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(LIBS), help="comma-separated libraries")
    parser.add_argument("--processes", default=f"1,{os.cpu_count() or 1}", help="worker layouts to run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    console = Console()
    libs = [lib for lib in args.only.split(",") if lib]
    layouts = sorted({int(n) for n in args.processes.split(",")})
    for lib in libs:
        if lib not in LIBS:
            raise SystemExit(f"unknown library {lib!r}; choose from {', '.join(LIBS)}")
        install(lib, console)
    data = Path(tempfile.mkdtemp(prefix="reliq-peers-redis-"))
    server = RedisServer(data, aof=False).start()
    rows = [Row(lib) for lib in libs]
    try:
        run = Run(server, args.tasks, console)
        for i in range(args.runs):
            for n in layouts:
                for row in rows:
                    try:
                        run.one(row, n)
                        console.print(f"run {i + 1}/{args.runs} {row.lib} {n} proc: "
                                      f"process {row.process[n][-1]:,.0f}/s")
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        row.failures.append(f"{n} proc, run {i + 1}: {exc}")
                        console.print(f"[red]{row.lib} {n} proc failed: {exc}")
        shutil.rmtree(run.counts, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    rich_table, md = table(rows, layouts)
    console.print(rich_table)
    for r in rows:
        for f in r.failures:
            console.print(f"[red]{r.lib}: {f}")
    if not args.no_write:
        write_section("peers", _markdown(md, rows, args))
        console.print("wrote bench/RESULTS.md")


def _markdown(md: str, rows: list[Row], args: argparse.Namespace) -> str:
    failures = [f"- {r.lib}: {f}" for r in rows for f in r.failures]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""## Peers: no-op tasks, {args.tasks:,} a run, {args.runs} runs, {when}

Machine: {machine()}

{md}

- Enqueue: each library's own client, one task a call; the async clients (reliq's
  AsyncClient, saq, arq) with {ENQUEUE_CONCURRENCY} calls in flight, the others one after another.
- Processing: worker processes started after the enqueue, each at concurrency 64 (Celery:
  threads pool; Dramatiq: 1 process x 64 threads; RQ: SimpleWorker, one job at a time, its
  fastest mode). Rate = tasks / (last finish - first start), counted inside the no-op.
- Per-job logging off where a library logs each job at INFO (arq). One redis-server, AOF off.
- Rerun: `.venv/bin/python bench/peers/run.py --tasks {args.tasks} --runs {args.runs}`
{chr(10).join(failures)}
"""


if __name__ == "__main__":
    main()
