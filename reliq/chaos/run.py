"""One chaos run from start to verdict: cluster up, load and faults, drain, audit, report."""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from reliq.chaos.audit import CHAOS_END_STATES, RedisState, audit, collect, read_executions, worker_pid
from reliq.chaos.cluster import Cluster, ClusterOptions
from reliq.chaos.faults import NOT_ON_A_CLUSTER, FaultLog, Injector, plan
from reliq.chaos.load import Load
from reliq.chaos.report import render
from reliq.connection import UNAVAILABLE, connect
from reliq.loops import cancel_all
from reliq.queue import Queue
from reliq.settings import Settings


@dataclass(frozen=True)
class ChaosOptions:
    """What ``reliq chaos`` was asked for."""

    duration: float = 60.0
    seed: int | None = None
    rate: float = 40.0
    workers: int = 4
    concurrency: int = 16
    settle_timeout: float = 90.0
    json_path: Path | None = None
    workdir: Path | None = None
    #: Primaries of a private Redis Cluster to run on (0: one redis-server).
    redis_cluster: int = 0
    #: Partitions of the run's queue.
    partitions: int = 1


def run_chaos(options: ChaosOptions, console: Console | None = None) -> int:
    """Run, print the report, write it as JSON if asked; 0 when nothing was lost or wrong."""
    console = console or Console()
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    # absolute: the run's children (redis-server, reliq roles) are handed paths inside it
    workdir = (options.workdir or Path(tempfile.mkdtemp(prefix="reliq-chaos-"))).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(_run(options, seed, workdir, console))
    render(report, console)
    if options.json_path:
        options.json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if report["ok"] and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report["ok"]:
        console.print(f"logs, execution log and Redis AOF kept in {workdir}")
    return 0 if report["ok"] else 1


async def _run(options: ChaosOptions, seed: int, workdir: Path, console: Console) -> dict[str, Any]:
    cluster = Cluster(workdir, f"chaos-{seed}", ClusterOptions(
        workers=options.workers, concurrency=options.concurrency, redis_cluster=options.redis_cluster,
        partitions=options.partitions))
    faults = FaultLog()
    redis = f"a Redis Cluster of {options.redis_cluster} primaries" if options.redis_cluster else "one redis-server"
    console.print(f"[bold]reliq chaos[/] seed {seed}: {options.duration:g}s, {options.workers} workers, "
                  f"{options.rate:g} tasks/s, {redis}, {options.partitions} partition(s), run directory {workdir}")
    await asyncio.to_thread(cluster.start)
    load = Load(cluster.api_url, random.Random(f"{seed}-load"), options.rate, workdir / "accepted.jsonl")
    injector = Injector(cluster, faults, random.Random(f"{seed}-faults"), load.submit_fault)
    # the supervisor replaces workers the poison pill kills, through the drain too
    supervisor = asyncio.create_task(injector.supervise())
    try:
        for w in cluster.workers:
            faults.event("worker", w.pid, "start")
        started = time.monotonic()
        await _inject(options, seed, load, injector, console)
        elapsed = time.monotonic() - started
        cluster.resume_all()
        client = connect(cluster.redis.url)
        try:
            queue = Queue(client, Settings(redis_url=cluster.redis.url, queue=cluster.queue))
            drained, drain_s, state = await _drain(queue, load, cluster, options.settle_timeout, console)
        finally:
            await client.aclose()
        live = cluster.live_pids()
    finally:
        await cancel_all([supervisor])
        codes = await asyncio.to_thread(cluster.stop)  # the proxy still serves its worker's hand-back
        await injector.close()
    (workdir / "faults.json").write_bytes(orjson.dumps(faults.to_json(), option=orjson.OPT_INDENT_2))
    report = audit(load.accepted, read_executions(cluster.exec_log), faults, state, live, cluster.options.lease)
    if not drained:
        report["ok"] = False
        report["problems"].insert(0, f"the queue did not drain within {options.settle_timeout:g}s")
    bad_exits = {pid: code for pid, code in codes.items() if code != 0}
    if bad_exits:
        report["ok"] = False
        report["problems"].append(f"workers did not shut down cleanly (pid: exit code): {bad_exits}")
    report.update({
        "seed": seed, "duration_s": options.duration, "load_s": round(elapsed, 1), "drain_s": round(drain_s, 1),
        "rate": options.rate, "workers": options.workers, "concurrency": options.concurrency,
        "redis_cluster": options.redis_cluster, "partitions": options.partitions,
        "requests": {"sent": load.sent, "accepted": len(load.accepted), "refused": dict(load.refused)},
        "fault_log": faults.to_json()["faults"], "workdir": str(workdir),
    })
    return report


async def _inject(options: ChaosOptions, seed: int, load: Load, injector: Injector, console: Console) -> None:
    """Drive the load while both fault streams run; stop it once both are done and time is up."""
    until = time.monotonic() + options.duration
    load_task = asyncio.create_task(load.run())
    skip = NOT_ON_A_CLUSTER if options.redis_cluster else ()
    streams = [asyncio.create_task(injector.sequence(plan(options.duration, random.Random(seed), skip), until)),
               asyncio.create_task(injector.kill_stream(until))]
    shown = 0
    try:
        while not all(s.done() for s in streams) or time.monotonic() < until:
            await asyncio.sleep(0.2)
            for f in injector.log.faults[shown:]:
                console.print(f"  {f.kind:<16} {f.detail}  pids {f.pids}")
            shown = len(injector.log.faults)
            for s in streams:
                if s.done() and s.exception():
                    raise s.exception()  # type: ignore[misc]
    finally:
        load.stop()
        await load_task
        await cancel_all(streams)


async def _drain(queue: Queue, load: Load, cluster: Cluster, timeout: float,
                 console: Console) -> tuple[bool, float, RedisState]:
    """Wait until every accepted task is final, the lists are empty and dead workers are reaped."""
    console.print(f"load stopped: {len(load.accepted)} accepted; waiting for the queue to drain")
    started = time.monotonic()
    ids = list(load.accepted)
    while True:
        try:
            if await _drained(queue, ids, cluster):
                break
        except UNAVAILABLE:
            pass
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started, await collect(queue)
        await asyncio.sleep(0.5)
    return True, time.monotonic() - started, await collect(queue)


async def _drained(queue: Queue, ids: list[str], cluster: Cluster) -> bool:
    snap = await queue.snapshot()
    if snap["pending"] or snap["delayed"] or snap["processing"]:
        return False
    live = cluster.live_pids()
    for part in await queue.parts():  # a worker is registered in each partition it serves
        if any(worker_pid(w) not in live for w in await part.worker_ids()):
            return False
    return all(state in CHAOS_END_STATES for state in await queue.states(ids))
