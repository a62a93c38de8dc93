"""``reliq bench``: it drives each enqueue path, waits for every task, and reports from the records.

These tests check what the report says, never how fast anything is (speed is measured by
the scripts in bench/, not by tests).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from reliq.api import create_app
from reliq.bench import Bench, BenchConfig, BenchReport, sample_percentiles
from reliq.connection import connect
from reliq.errors import ConfigError
from reliq.queue import Queue
from reliq.redis_server import free_port
from reliq.settings import Settings
from reliq.worker import Worker
from tests.procs import ROOT


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[None]:
    """A worker serving the test's queue in this process while the test runs."""
    redis = connect(settings.redis_url, max_connections=8)
    stop = asyncio.Event()
    run = asyncio.create_task(Worker(Queue(redis, settings), settings).run(stop))
    yield
    stop.set()
    await run
    await redis.aclose()


@pytest.fixture
async def api_url(queue: Queue, settings: Settings) -> AsyncIterator[str]:
    """The producer API of the test's queue, on a free port of 127.0.0.1."""
    server = TestServer(create_app(queue, settings), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def config(settings: Settings, **options: object) -> BenchConfig:
    given: dict[str, object] = {"timeout": 20.0, **options}
    return BenchConfig(redis_url=settings.redis_url, queue=settings.queue, progress=False,
                       **given)  # type: ignore[arg-type]


def assert_complete(report: BenchReport, tasks: int) -> None:
    assert report["sent"] == report["accepted"] == tasks
    assert report["states"] == {"succeeded": tasks}
    assert report["unfinished"] == 0 and report["rejected"] == {}
    assert report["enqueue_rate"] > 0 and report["process_rate"] > 0
    start, finish = report["enqueue_to_start_ms"], report["enqueue_to_finish_ms"]
    assert 0 <= start["p50"] <= start["p95"] <= start["p99"] <= start["max"] <= finish["max"]
    assert finish["p50"] >= start["p50"]


@pytest.mark.usefixtures("worker")
async def test_post_task_sends_every_task_and_waits_for_all_to_finish(settings: Settings, api_url: str) -> None:
    report = await Bench(config(settings, url=api_url, tasks=300, concurrency=8)).run()
    assert report["mode"] == "http"
    assert_complete(report, 300)


@pytest.mark.usefixtures("worker")
async def test_batches_go_through_post_tasks_and_the_last_one_is_cut_to_size(
        settings: Settings, api_url: str) -> None:
    report = await Bench(config(settings, url=api_url, tasks=250, batch=100, concurrency=2)).run()
    assert report["mode"] == "http-batch"
    assert_complete(report, 250)


@pytest.mark.usefixtures("worker")
async def test_direct_mode_enqueues_through_the_client_without_http(settings: Settings, queue: Queue) -> None:
    report = await Bench(config(settings, direct=True, tasks=200, concurrency=4)).run()
    assert report["mode"] == "direct"
    assert_complete(report, 200)
    assert (await queue.snapshot())["succeeded"] == 200


@pytest.mark.usefixtures("worker")
async def test_open_loop_holds_the_arrival_rate(settings: Settings) -> None:
    started = asyncio.get_running_loop().time()
    report = await Bench(config(settings, direct=True, tasks=60, rate=200)).run()
    assert_complete(report, 60)
    assert asyncio.get_running_loop().time() - started >= 59 / 200  # not flat out


@pytest.mark.usefixtures("worker")
async def test_duration_bounds_the_run_instead_of_a_task_count(settings: Settings) -> None:
    report = await Bench(config(settings, direct=True, tasks=0, duration=0.3, rate=100)).run()
    assert 20 <= report["accepted"] <= 40
    assert report["unfinished"] == 0


async def test_rejected_requests_are_counted_not_fatal(settings: Settings, api_url: str) -> None:
    report = await Bench(config(settings, url=api_url, tasks=5, type="")).run()  # '' is not a type: 400
    assert report["accepted"] == 0 and report["rejected"] == {"400": 5}


async def test_invalid_tasks_in_direct_mode_are_counted_not_fatal(settings: Settings) -> None:
    report = await Bench(config(settings, direct=True, tasks=3, type="")).run()
    assert report["accepted"] == 0 and report["rejected"] == {"InvalidTask": 3}


async def test_tasks_that_never_finish_are_reported_after_the_timeout(settings: Settings) -> None:
    report = await Bench(config(settings, direct=True, tasks=3, timeout=0.2)).run()  # no worker runs
    assert report["unfinished"] == 3 and report["states"] == {"pending": 3}


@pytest.mark.parametrize("url", ["http://10.0.0.1:8085", "http://example.com", "http://0.0.0.0:8085"])
def test_only_this_machine_is_ever_a_target(url: str) -> None:
    with pytest.raises(ConfigError, match="only targets this machine"):
        BenchConfig(url=url).check()
    with pytest.raises(ConfigError, match="only targets this machine"):
        BenchConfig(redis_url=url.replace("http", "redis"), direct=True).check()


def test_percentiles_are_nearest_rank() -> None:
    assert sample_percentiles(list(range(1, 101))) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert sample_percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


def test_cli_prints_a_json_report(settings: Settings) -> None:
    worker = subprocess.Popen([sys.executable, "-m", "reliq", "work", "--redis-url", settings.redis_url,
                               "--queue", settings.queue, "--log-level", "WARNING"], cwd=ROOT)
    try:
        out = subprocess.run([sys.executable, "-m", "reliq", "bench", "--direct", "--redis-url", settings.redis_url,
                              "--queue", settings.queue, "--tasks", "100", "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        worker.terminate()
        worker.wait(10)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accepted"] == 100 and report["states"] == {"succeeded": 100}


def test_cli_refuses_bad_input_with_a_message(settings: Settings) -> None:
    for args, message in ((["--payload", "{nope"], "not valid JSON"),
                          (["--url", "http://192.168.1.9:8085"], "only targets this machine")):
        out = subprocess.run([sys.executable, "-m", "reliq", "bench", "--redis-url", settings.redis_url, *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and message in out.stderr, out.stderr
