"""Helpers for the tests of what reliq ships for Prometheus and Grafana (deploy/).

The rules and the dashboard are checked against the real tools (promtool, a Prometheus
server) and against a real ``/metrics`` output, never against a list typed by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.redis_server import free_port, terminate
from reliq.schedules import make_schedule
from reliq.settings import Settings
from reliq.worker import Worker
from tests.util import wait_until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reliq-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "reliq-rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
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
    await queue.schedule_put(make_schedule("nightly", type="noop", cron="@daily"), "api")  # its families
    app = monitor.create_app(queue, settings)
    async with TestClient(TestServer(app)) as http:
        await app[monitor.SAMPLER].sample_once()
        await app[monitor.SAMPLER].sample_once()
        body = await (await http.get("/metrics")).text()
    return {re.split(r"[{ ]", line)[0] for line in body.splitlines() if line and not line.startswith("#")}


class PrometheusServer:
    """A real Prometheus (``/usr/bin/prometheus``) on a free port, with a temp TSDB.

    Scrapes ``targets`` every second and evaluates ``rule_files`` every second.
    """

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "reliq", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        """Start it and return once it answers ready."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self._ready() or self.proc is None or self.proc.poll() is not None, timeout=30,
                   what="prometheus ready")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate it (SIGTERM: it shuts its TSDB down cleanly)."""
        terminate(self.proc)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, or an AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        assert body["status"] == "success", (params, body.get("errorType"), body.get("error"))
        return body["data"]

    def query(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query: each series' labels (``__name__`` aside) -> value."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {frozenset((k, v) for k, v in s["metric"].items() if k != "__name__"): float(s["value"][1])
                for s in data["result"]}

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series (None when it selects none)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return next(iter(result.values()), None)


DASHBOARD = ROOT / "deploy" / "grafana" / "reliq.json"
#: What Grafana puts in for its built-in variables when it runs a query.
GRAFANA_BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard() -> dict[str, Any]:
    """deploy/grafana/reliq.json, parsed."""
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every PromQL query of the dashboard's panels."""
    return [(f"{p['title']} {t['refId']}", t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def with_variables(expr: str, queue: str = ".*", type: str = ".*") -> str:
    """``expr`` as Grafana sends it: the template variables replaced by values."""
    for name, value in {**GRAFANA_BUILTINS, "$queue": queue, "$type": type}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr
