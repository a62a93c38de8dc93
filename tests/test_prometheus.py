"""A real Prometheus scrapes a real ``reliq monitor`` while a real worker runs a known load.

The counters, the recording rules of deploy/prometheus/reliq-rules.yaml and the alerts it
fires are read back through Prometheus's HTTP API and checked against the tasks this test
ran, task by task.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reliq.client import Client
from reliq.redis_server import answers, free_port
from tests import procs
from tests.promkit import RULES, PrometheusServer, dashboard_queries, with_variables
from tests.util import wait_until

#: One process of a parallel run (pytest -n) runs the module's tests: one monitor and Prometheus.
pytestmark = pytest.mark.xdist_group("prometheus")

#: Tasks a wave; waves come a little over a scrape apart, so rates see the counters rise.
WAVE = {"noop": 20, "sleep": 5, "fail": 2}
WAVES = 3
SLEEP_S = 0.03


@dataclass
class Run:
    """What the test ran and the Prometheus that watched it."""

    prom: PrometheusServer
    queue: str
    ids: dict[str, list[str]]

    def sel(self, **labels: str) -> str:
        """A label selector of this run's queue and ``labels``."""
        return "{" + ",".join(f'{k}="{v}"' for k, v in {"queue": self.queue, **labels}.items()) + "}"


def _start_monitor(redis_url: str, queue: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = procs.reliq(["monitor", "--redis-url", redis_url, "--queue", queue, "--port", str(port)],
                       workdir / "monitor.log")
    wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, timeout=30, what="monitor listening")
    assert proc.poll() is None, (workdir / "monitor.log").read_text()
    return proc, port


def _send_load(client: Client) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {t: [] for t in WAVE}
    for wave in range(WAVES):
        if wave:
            time.sleep(1.3)
        ids["noop"] += client.enqueue_many([("noop", i) for i in range(WAVE["noop"])])
        ids["sleep"] += client.enqueue_many([("sleep", SLEEP_S)] * WAVE["sleep"])
        ids["fail"] += [client.enqueue("fail", i, max_retries=1) for i in range(WAVE["fail"])]
    return ids


def _states(client: Client, ids: dict[str, list[str]]) -> dict[str, set[str]]:
    return {t: {str(client.get(i)["state"]) for i in batch} for t, batch in ids.items()}


@pytest.fixture(scope="module")
def run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("prometheus")
    queue = "prom-" + uuid.uuid4().hex[:10]
    started: list[Any] = []
    client = Client(redis_url, queue)
    try:
        monitor, port = _start_monitor(redis_url, queue, workdir)
        started.append(monitor)
        prom = PrometheusServer(workdir, [f"127.0.0.1:{port}"], [RULES]).start()
        started.append(prom)
        r = Run(prom, queue, {})
        wait_until(lambda: prom.value(f"reliq_tasks_dead_total{r.sel()}") == 0, timeout=30, what="first scrape")
        started.append(procs.worker(redis_url, queue, workdir / "worker.log", "--retry-base", "0.05"))
        wait_until(lambda: prom.value(f"reliq_workers{r.sel()}") == 1, timeout=30, what="worker seen by Prometheus")
        r.ids = _send_load(client)
        final = {"noop": {"succeeded"}, "sleep": {"succeeded"}, "fail": {"dead"}}
        wait_until(lambda: _states(client, r.ids) == final, timeout=40, what="every task settled")
        # Every final count, not one: under load the worker's last metrics flush and the
        # scrape that sees it can come after the scrape that saw the noops' last count.
        last = {("noop", "ok"): len(r.ids["noop"]), ("sleep", "ok"): len(r.ids["sleep"]),
                ("fail", "error"): 2 * len(r.ids["fail"])}
        wait_until(lambda: all(prom.value(f"reliq_tasks_total{r.sel(type=t, outcome=o)}") == n
                               for (t, o), n in last.items()),
                   timeout=30, what="Prometheus scraped the last counts")
        yield r
    finally:
        client.close()
        for proc in reversed(started):
            proc.stop() if isinstance(proc, PrometheusServer) else procs.stop(proc)


def test_prometheus_scrapes_the_counts_of_exactly_the_tasks_the_test_ran(run: Run) -> None:
    n = {t: len(ids) for t, ids in run.ids.items()}
    assert n == {t: k * WAVES for t, k in WAVE.items()}
    v = run.prom.value
    assert v(f"reliq_tasks_total{run.sel(type='noop', outcome='ok')}") == n["noop"]
    assert v(f"reliq_tasks_total{run.sel(type='sleep', outcome='ok')}") == n["sleep"]
    assert v(f"reliq_tasks_total{run.sel(type='fail', outcome='error')}") == 2 * n["fail"]  # one retry each
    assert v(f"reliq_tasks_enqueued_total{run.sel()}") == sum(n.values())
    assert v(f"reliq_tasks_retried_total{run.sel()}") == n["fail"]
    assert v(f"reliq_tasks_dead_total{run.sel()}") == n["fail"]
    assert v(f"reliq_queue_depth{run.sel(state='dead')}") == n["fail"]
    assert v(f"reliq_queue_depth{run.sel(state='pending')}") == 0
    assert v(f"reliq_task_run_seconds_count{run.sel(type='sleep')}") == n["sleep"]
    assert v(f'sum(reliq_task_wait_seconds_count{run.sel()})') == n["noop"] + n["sleep"] + 2 * n["fail"]


def test_recording_rules_give_each_types_failure_ratio_throughput_and_run_time(run: Run) -> None:
    v = run.prom.value
    assert v(f"queue_type:reliq_tasks_failure:ratio5m{run.sel(type='fail')}") == 1
    assert v(f"queue_type:reliq_tasks_failure:ratio5m{run.sel(type='noop')}") == 0
    assert v(f"queue_type:reliq_tasks_failure:ratio5m{run.sel(type='sleep')}") == 0
    for ttype in WAVE:
        assert (v(f"queue_type:reliq_tasks:rate5m{run.sel(type=ttype)}") or 0) > 0, ttype
    assert (v(f"queue:reliq_tasks_dead:rate5m{run.sel()}") or 0) > 0
    p50 = v(f"queue_type:reliq_task_run_seconds:quantile5m{run.sel(type='sleep', quantile='0.5')}")
    assert p50 is not None and SLEEP_S * 0.8 <= p50 <= 0.1, p50  # handlers sleep 30 ms
    p99 = v(f"queue_type:reliq_task_run_seconds:quantile5m{run.sel(type='noop', quantile='0.99')}")
    assert p99 is not None and p99 < SLEEP_S, p99


def test_dead_letter_alert_fires_for_the_queue_and_no_other(run: Run) -> None:
    def firing() -> set[str]:
        alerts = run.prom.api("alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts
                if a["labels"].get("queue") == run.queue and a["state"] == "firing"}

    wait_until(lambda: "ReliqDeadLetterGrowing" in firing(), timeout=20, what="ReliqDeadLetterGrowing firing")
    assert firing() == {"ReliqDeadLetterGrowing"}


def test_every_grafana_query_runs_on_prometheus_and_shows_this_queue(run: Run) -> None:
    empty = set()
    for where, expr in dashboard_queries():
        result = run.prom.query(with_variables(expr, queue=run.queue))  # a parse error is a 400: it fails here
        if not result:
            empty.add(where)
    # the test's Redis has no maxmemory, which the panel leaves out rather than draw a limit of 0
    assert empty == {"Redis memory B"}, f"panels with no data for a queue that ran tasks: {empty}"
