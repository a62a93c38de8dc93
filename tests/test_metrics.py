"""GET /metrics: read from Redis for the whole fleet, valid for Prometheus and promtool."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from reliq.histogram import BOUNDS_S
from reliq.monitor import app as monitor
from reliq.monitor.autoscale import DesiredWorkers, Reading, estimate
from reliq.monitor.metrics import N_BUCKETS, exposition, parse_metrics, quantile
from reliq.queue import Queue
from reliq.settings import Settings
from tests import procs

# -- the maths --------------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    counts = [0] * N_BUCKETS
    i = BOUNDS_S.index(0.025)
    counts[i] = 10  # all ten between 10 ms and 25 ms
    assert quantile(counts, 0.5) == pytest.approx(0.01 + 0.015 * 0.5)
    assert quantile(counts, 1.0) == pytest.approx(0.025)
    counts[0] = 10  # ten more under 1 ms: the median is the top of the first bucket
    assert quantile(counts, 0.5) == pytest.approx(0.001)
    assert quantile(counts, 0.25) == pytest.approx(0.0005)


def test_quantile_of_nothing_is_none_and_past_the_last_bound_is_the_last_bound() -> None:
    assert quantile([0] * N_BUCKETS, 0.5) is None
    counts = [0] * N_BUCKETS
    counts[-1] = 3
    assert quantile(counts, 0.99) == BOUNDS_S[-1]


def test_parse_metrics_keeps_types_that_contain_the_separator() -> None:
    parsed = parse_metrics({"t|a|b|ok": 2, "w|a|b|3": 2, "ws|a|b": 40, "r|a|b|0": 2, "rs|a|b": 1, "r|x|99": 5})
    m = parsed["a|b"]
    assert m.outcomes == {"ok": 2} and m.wait[3] == 2 and m.wait_sum_ms == 40 and m.run[0] == 2
    assert "x" not in parsed  # a bucket index past +Inf is ignored, not a crash


# -- the endpoint ---------------------------------------------------------------------------------


def families(text: str) -> dict[str, list[Sample]]:
    """Samples of each family, by family name."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    [found] = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return float(found.value)


async def scrape(queue: Queue, settings: Settings) -> str:
    client = TestClient(TestServer(monitor.create_app(queue, settings)))
    await client.start_server()
    try:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()
    finally:
        await client.close()


async def test_metrics_cover_every_worker_process_and_histograms_count_every_run(
    queue: Queue, settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    for i in range(150):
        await queue.enqueue("noop", i)
    for _ in range(10):
        await queue.enqueue("sleep", 0.01)
    for i in range(4):
        await queue.enqueue("fail", i, max_retries=1)  # two runs each, then dead
    workers = [procs.worker(redis_url, settings.queue, tmp_path / f"w{n}.log", "--burst", "--concurrency", "4",
                            "--retry-base", "0.01") for n in range(2)]
    try:
        for w in workers:
            assert await asyncio.to_thread(w.wait, 60) == 0, (tmp_path / "w0.log").read_text()
    finally:
        for w in workers:
            procs.stop(w)
    text = await scrape(queue, settings)
    fam = families(text)

    runs = {"noop": 150, "sleep": 10, "fail": 8}
    for ttype, n in runs.items():
        for hist in ("reliq_task_run_seconds", "reliq_task_wait_seconds"):
            samples = fam[hist]
            assert value(samples, hist + "_count", queue=settings.queue, type=ttype) == n
            assert value(samples, hist + "_bucket", queue=settings.queue, type=ttype, le="+Inf") == n
            buckets = [s.value for s in samples if s.name == hist + "_bucket" and s.labels["type"] == ttype]
            assert buckets == sorted(buckets) and len(buckets) == N_BUCKETS
    assert value(fam["reliq_task_run_seconds"], "reliq_task_run_seconds_sum", type="sleep") >= 10 * 0.009  # ms, uvloop
    tasks = fam["reliq_tasks"]
    assert value(tasks, "reliq_tasks_total", type="noop", outcome="ok") == 150
    assert value(tasks, "reliq_tasks_total", type="fail", outcome="error") == 8
    depth = fam["reliq_queue_depth"]
    assert value(depth, "reliq_queue_depth", state="dead") == 4
    assert value(depth, "reliq_queue_depth", state="pending") == 0
    assert value(fam["reliq_workers"], "reliq_workers", queue=settings.queue) == 0  # burst workers left
    assert value(fam["reliq_tasks_recovered"], "reliq_tasks_recovered_total") == 0
    assert value(fam["reliq_tasks_enqueued"], "reliq_tasks_enqueued_total") == 164
    assert value(fam["reliq_queue_lag_seconds"], "reliq_queue_lag_seconds") == 0


async def test_metrics_of_an_untouched_queue_still_have_every_queue_family(queue: Queue, settings: Settings) -> None:
    await queue.enqueue("noop", None)
    fam = families(await scrape(queue, settings))
    for name in ("reliq_queue_depth", "reliq_queue_lag_seconds", "reliq_workers", "reliq_tasks_recovered"):
        assert name in fam
    assert value(fam["reliq_queue_depth"], "reliq_queue_depth", state="pending") == 1
    assert value(fam["reliq_queue_lag_seconds"], "reliq_queue_lag_seconds") >= 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
async def test_promtool_accepts_the_exposition(queue: Queue, settings: Settings) -> None:
    from reliq import builtins
    from reliq.worker import Worker

    assert builtins
    for i in range(5):
        await queue.enqueue("noop", i)
    await queue.enqueue("type|with|bars and \"quotes\"", None)  # unknown type: label escaping
    await Worker(queue, settings, burst=True).run()
    text = await scrape(queue, settings)
    result = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=text.encode(),
                                     capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert value(families(text)["reliq_tasks"], "reliq_tasks_total", outcome="unknown_type") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
async def test_two_queues_are_one_exposition_each_family_described_once(queue: Queue, settings: Settings) -> None:
    other = f"{settings.queue}-b"
    multi = settings.replace(queues=(settings.queue, other))
    await queue.enqueue("noop", None)
    text = await scrape(queue, multi)
    described = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert "reliq_desired_workers" in described and len(described) == len(set(described))
    fam = families(text)
    assert {s.labels["queue"] for s in fam["reliq_queue_depth"]} == {settings.queue, other}
    result = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=text.encode(),
                                     capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_the_desired_workers_of_every_queue_are_samples_of_one_family() -> None:
    old = Reading(t=0, arrived=0, runs=0, run_ms=0, pending=50, lag_s=5, workers=1, slots=4)
    new = Reading(t=10, arrived=100, runs=40, run_ms=4000, pending=60, lag_s=8, workers=1, slots=4)
    text = exposition(DesiredWorkers([("a", estimate(old, new)), ("b", None), ("c", estimate(old, new))])).decode()
    assert text.count("# TYPE reliq_desired_workers gauge") == 1
    assert [s.labels["queue"] for s in families(text)["reliq_desired_workers"]] == ["a", "c"]
