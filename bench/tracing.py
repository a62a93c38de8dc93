"""What OpenTelemetry costs a worker: CPU a no-op task, with and without the ``otel`` extra.

    .venv/bin/python bench/tracing.py [--tasks 20000] [--runs 3]

One private redis-server (AOF off). Each run and mode is a fresh process (a tracer
provider is set once a process) that enqueues the tasks in batches of 100, then runs
one burst worker (uvloop) until the queue is empty; it reports the CPU the process spent
a task enqueuing and processing (process_time: far less noisy than rates on a shared
machine) and the rate. The modes run interleaved, run after run:

- ``absent``: ``opentelemetry`` cannot be imported (the extra not installed);
- ``installed``: importable, no tracer provider set, nothing exported (the default);
- ``sdk``: an SDK provider with no processor, tasks enqueued inside a span: every
  attempt makes a real span that goes nowhere (the most that tracing can cost without
  an exporter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODES = ("absent", "installed", "sdk")


def child(mode: str, url: str, tasks: int) -> dict[str, float]:
    """One run in this process: enqueue ``tasks`` no-ops, then work them off."""
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    import uvloop

    import reliq.builtins  # noqa: F401  (registers noop)
    from reliq.connection import connect
    from reliq.queue import Queue, make_spec
    from reliq.registry import REGISTRY
    from reliq.settings import Settings
    from reliq.worker import Worker

    span: Any = None
    if mode == "sdk":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        span = trace.get_tracer("bench").start_span("enqueue")

    async def run() -> dict[str, float]:
        settings = Settings(redis_url=url, queue=f"tracing-{mode}")
        redis = connect(url, max_connections=8)
        queue = Queue(redis, settings)
        cpu = time.process_time()
        if span is not None:
            from opentelemetry import trace

            with trace.use_span(span):
                for i in range(0, tasks, 100):
                    await queue.enqueue_specs([make_spec("noop") for _ in range(min(100, tasks - i))])
        else:
            for i in range(0, tasks, 100):
                await queue.enqueue_specs([make_spec("noop") for _ in range(min(100, tasks - i))])
        enqueue_cpu = time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        await Worker(queue, settings, REGISTRY, burst=True).run()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await redis.aclose()
        return {"enqueue_us": enqueue_cpu / tasks * 1e6, "worker_us": cpu / tasks * 1e6, "rate": tasks / seconds}

    return uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.tasks)))
        return
    sys.path.insert(0, str(HERE.parent))
    from reliq.redis_server import RedisServer

    data = Path(tempfile.mkdtemp(prefix="reliq-tracing-redis-"))
    server = RedisServer(data, aof=False).start()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for i in range(args.runs):
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--url", server.url,
                                      "--tasks", str(args.tasks)], capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.splitlines()[-1]))
                print(f"run {i + 1} {mode}: " + ", ".join(f"{k} {v:,.2f}" for k, v in runs[mode][-1].items()))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    base = statistics.median(r["worker_us"] for r in runs["absent"])
    print("| mode | worker CPU a task, µs | vs absent | enqueue CPU a task, µs | tasks/s |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        worker = statistics.median(r["worker_us"] for r in runs[mode])
        print(f"| {mode} | {worker:.1f} | {(worker / base - 1) * 100:+.1f}% | "
              f"{statistics.median(r['enqueue_us'] for r in runs[mode]):.1f} | "
              f"{statistics.median(r['rate'] for r in runs[mode]):,.0f} |")


if __name__ == "__main__":
    main()
