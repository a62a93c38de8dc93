"""POST /task of ``reliq serve`` against the two references, in one run, same load.

    .venv/bin/python bench/api_vs_refs.py [--seconds 5] [--runs 3] [--concurrency 64]

Starts one private redis-server, ``reliq serve`` (one process), ``ref_lpush.py`` (one
LPUSH a request) and ``ref_noredis.py`` (no Redis call), then drives each in turn with
the same closed loop of ``--concurrency`` connections from a separate process, after a
warm-up. Also measures POST /tasks with 100 tasks a request. Prints requests/s, median
[min-max] of the runs, and writes its section of RESULTS.md.

The load comes from wrk (Debian's ``wrk``; one thread) when it is installed, else from
aiohttp's client (``--requests`` a run). On two cores the choice matters: the Python
client takes about a core itself, so it caps every server near its own rate (13,500/s
here) and squeezes the differences between them; wrk costs a fraction of that. Each wrk
run is checked: every answer 2xx, no socket errors, and (for reliq) every request
answered has its task in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import orjson
import redis
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import machine, spread, write_section  # noqa: E402

from reliq.keys import QueueKeys  # noqa: E402
from reliq.redis_server import RedisServer, answers, free_port  # noqa: E402

BODY = orjson.dumps({"type": "noop", "payload": None})
BATCH = 100


async def hammer(url: str, body: bytes, requests: int, concurrency: int) -> float:
    """Send ``requests`` POSTs of ``body`` over ``concurrency`` connections; requests/s."""
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        left = iter(range(requests))

        async def sender() -> None:
            for _ in left:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status not in (200, 202):
                        raise RuntimeError(f"{url} answered {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def wrk(url: str, body: bytes, seconds: int, concurrency: int, workdir: Path) -> tuple[float, int]:
    """Run wrk (one thread) POSTing ``body`` for ``seconds``; (requests/s, requests answered)."""
    (workdir / "body").write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(f'''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{workdir / "body"}", "rb")
wrk.body = f:read("*a")
f:close()
''')
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} saw failed requests:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return float(rate.group(1)), int(total.group(1))


@contextmanager
def server(cmd: list[str], port: int) -> Iterator[None]:
    """Run one HTTP server process until the block ends."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} did not start")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of a run with wrk")
    parser.add_argument("--requests", type=int, default=20_000, help="tasks a run without wrk")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    console = Console()
    data = Path(tempfile.mkdtemp(prefix="reliq-http-redis-"))
    srv = RedisServer(data, aof=False).start()
    py = sys.executable
    ports = {name: free_port() for name in ("reliq", "lpush", "noredis")}
    commands = {
        "reliq": [py, "-m", "reliq", "serve", "--redis-url", srv.url, "--queue", "bench", "--port",
                  str(ports["reliq"]), "--log-level", "WARNING"],
        "lpush": [py, str(HERE / "ref_lpush.py"), "--port", str(ports["lpush"]), "--redis-url", srv.url],
        "noredis": [py, str(HERE / "ref_noredis.py"), "--port", str(ports["noredis"])],
    }
    cases = [  # (label, server, path, body, tasks a request)
        ("reliq serve POST /task", "reliq", "/task", BODY, 1),
        ("ref_lpush.py (1 LPUSH a request)", "lpush", "/task", BODY, 1),
        ("ref_noredis.py (no Redis)", "noredis", "/task", BODY, 1),
        (f"reliq serve POST /tasks x{BATCH}", "reliq", "/tasks", b"[" + b",".join([BODY] * BATCH) + b"]", BATCH),
    ]
    rates: dict[str, list[float]] = {label: [] for label, *_ in cases}
    flush = redis.Redis.from_url(srv.url)
    use_wrk = shutil.which("wrk") is not None
    console.print(f"load generator: {'wrk' if use_wrk else 'aiohttp client (install wrk for a lighter one)'}")
    try:
        with server(commands["reliq"], ports["reliq"]), server(commands["lpush"], ports["lpush"]), \
                server(commands["noredis"], ports["noredis"]):
            for run in range(args.runs):
                for label, name, path, body, per in cases:
                    flush.flushall()
                    url = f"http://127.0.0.1:{ports[name]}{path}"
                    if use_wrk:
                        wrk(url, body, 1, args.concurrency, data)  # warm-up
                        flush.flushall()
                        rate, answered = wrk(url, body, args.seconds, args.concurrency, data)
                        rate *= per
                        stored = flush.llen(QueueKeys("bench").pending) if name == "reliq" else answered * per
                        if stored < answered * per:
                            raise RuntimeError(f"{label}: {answered * per} tasks accepted, {stored} in Redis")
                    else:
                        n = args.requests // per
                        asyncio.run(hammer(url, body, max(50, n // 20), args.concurrency))  # warm-up
                        rate = asyncio.run(hammer(url, body, n, args.concurrency)) * per
                    rates[label].append(rate)
                    console.print(f"run {run + 1}/{args.runs} {label}: {rate:,.0f} tasks/s")
    finally:
        srv.stop()
        shutil.rmtree(data, ignore_errors=True)
    _report(rates, cases, args, console, use_wrk)


def _report(rates: dict[str, list[float]], cases: list[tuple[str, str, str, bytes, int]],
            args: argparse.Namespace, console: Console, use_wrk: bool) -> None:
    def median(label: str) -> float:
        values = sorted(rates[label])
        return values[len(values) // 2] if values else 0.0

    ref = median(cases[1][0])
    t = Table("server", "tasks/s accepted", "÷ ref_lpush")
    md = ["| server | tasks/s accepted | ÷ ref_lpush |", "|---|---|---|"]
    for label, *_ in cases:
        ratio = f"{median(label) / ref:.2f}" if ref else "-"
        t.add_row(label, spread(rates[label]), ratio)
        md.append(f"| {label} | {spread(rates[label])} | {ratio} |")
    console.print(t)
    if args.no_write:
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if use_wrk:
        load = f"wrk (one thread), {args.seconds} s a run; every answer 2xx and every accepted task in Redis"
        rerun = f"--seconds {args.seconds}"
    else:
        load = f"one aiohttp client process, {args.requests:,} tasks a run"
        rerun = f"--requests {args.requests}"
    write_section("http", f"""## Producer API against the references, {when}

Machine: {machine()}

{chr(10).join(md)}

- {args.concurrency} concurrent connections from {load}, after a warm-up, {args.runs} runs;
  each server is one process (uvloop), one private redis-server (AOF off), flushed
  before each run; no worker runs meanwhile.
- Rerun: `.venv/bin/python bench/api_vs_refs.py {rerun} --runs {args.runs}`
""")
    console.print(f"wrote {HERE / 'RESULTS.md'} (pid {os.getpid()})")


if __name__ == "__main__":
    main()
