"""Helpers for the tests of what reliq ships for Prometheus and Grafana (deploy/).

The rules and the dashboard are checked against the real tools (promtool, a Prometheus
server) and against a real ``/metrics`` output, never against a list typed by hand.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from reliq import monitor
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reliq-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "reliq-rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
#: Metric names the rules use that other changes of this session announced but that may
#: not be on /metrics yet (event loop blocks, Redis memory, dead-letter evictions).
ANNOUNCED = frozenset({
    "reliq_event_loop_blocked_seconds_count", "reliq_redis_memory_used_bytes", "reliq_redis_memory_max_bytes",
    "reliq_tasks_refused_memory_total", "reliq_dead_evicted_total", "reliq_dead_letter_oldest_age_seconds",
})
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def tool(name: str) -> str:
    """Path of a Prometheus binary (the Debian ``prometheus`` package; .ci/run installs it)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} is not installed: apt-get install prometheus (.ci/run does)"
    return path


def groups() -> list[dict[str, Any]]:
    """The rule groups of deploy/prometheus/reliq-rules.yaml."""
    return list(yaml.safe_load(RULES.read_text())["groups"])


def rules() -> list[dict[str, Any]]:
    """Every rule of every group."""
    return [rule for group in groups() for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The reliq_* series names a PromQL expression selects (label values and recording rules aside)."""
    return {n for n in _NAME.findall(_STRING.sub('""', expr)) if n.startswith("reliq_")}


def recorded() -> set[str]:
    """Names of the recording rules."""
    return {r["record"] for r in rules() if "record" in r}


async def exported(queue: Queue, settings: Settings) -> set[str]:
    """Every series name on a real ``/metrics`` of ``queue``, after tasks that succeed, retry and die."""
    for _ in range(3):
        await queue.enqueue("noop")
    await queue.enqueue("fail", max_retries=0)
    await Worker(queue, settings, burst=True).run()
    app = monitor.create_app(queue, settings)
    async with TestClient(TestServer(app)) as http:
        await app[monitor.SAMPLER].sample_once()
        await app[monitor.SAMPLER].sample_once()
        body = await (await http.get("/metrics")).text()
    return {re.split(r"[{ ]", line)[0] for line in body.splitlines() if line and not line.startswith("#")}
