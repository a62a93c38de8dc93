"""Dockerfile, docker-compose.yml and deploy/kubernetes/ agree with the code.

Every file parses; every image is the one the Dockerfile builds for this version; every
port is one a reliq role listens on; every probe and health check asks a path the app on
that port serves; every metric an autoscaler queries is on the monitor's /metrics.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reliq import __version__, api
from reliq.connection import connect
from reliq.monitor import app as monitor
from reliq.queue import Queue
from reliq.settings import Settings
from reliq.worker.health import health_app

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
VERSION = __version__
IMAGE = f"reliq:{VERSION}"
DEFAULTS = Settings()


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/kubernetes (Helm values files aside)."""
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name.endswith("-values.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def objects(kind: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of one kind."""
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def role_of(args: list[str]) -> tuple[str, int]:
    """The role (``serve``, ``monitor``, ``work``) a reliq command line runs, and its HTTP port."""
    role = args[0]
    ports = {"serve": DEFAULTS.api_port, "monitor": DEFAULTS.monitor_port, "work": 0}
    port = ports[role]
    if "--port" in args:
        port = int(args[args.index("--port") + 1])
    if "--health-port" in args:
        port = int(args[args.index("--health-port") + 1])
    return role, port


def get_paths(app: web.Application) -> set[str]:
    """The paths an app answers GET on."""
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """GET paths of each role's HTTP app (built, not started: no Redis needed)."""
    queue = Queue(connect("redis://127.0.0.1:1/0"), DEFAULTS)
    return {"serve": get_paths(api.create_app(queue, DEFAULTS)),
            "monitor": get_paths(monitor.create_app(queue, DEFAULTS)),
            "work": get_paths(health_app())}


def test_every_file_parses_and_every_kubernetes_object_is_well_formed() -> None:
    docs = list(k8s_docs())
    assert {doc["kind"] for _, doc in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap",
                                                 "ScaledObject", "HorizontalPodAutoscaler", "Kustomization"}
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).exists() for name in listed)
    yaml.safe_load((K8S / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
    assert set(compose()["services"]) == {"redis", "api", "monitor", "worker"}


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    """(Deployment name, container) for every container of every Deployment."""
    for d in objects("Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            yield d["metadata"]["name"], c


def test_every_image_is_the_one_the_dockerfile_builds_for_this_version() -> None:
    assert {c["image"] for _, c in containers()} == {IMAGE}
    services = compose()["services"]
    assert {services[s]["image"] for s in ("api", "monitor", "worker")} == {IMAGE}
    assert services["redis"]["image"].startswith("redis:7")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {IMAGE} ." in dockerfile
    assert re.search(r"^FROM python:3\.\d+-slim\b", dockerfile, re.M)
    assert 'ENTRYPOINT ["reliq"]' in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")


def test_every_port_is_one_the_role_listens_on_and_services_point_at_them() -> None:
    named: dict[str, dict[str, int]] = {}
    for name, c in containers():
        _, port = role_of(c["args"])
        assert [p["containerPort"] for p in c["ports"]] == [port], name
        named[name] = {p["name"]: p["containerPort"] for p in c["ports"]}
    for svc in objects("Service"):
        component = svc["spec"]["selector"]["app.kubernetes.io/component"]
        ports = named[f"reliq-{component}"]
        for p in svc["spec"]["ports"]:
            assert ports[p["targetPort"]] == p["port"], svc["metadata"]["name"]
    exposed = re.findall(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)[0].split()
    assert {DEFAULTS.api_port, DEFAULTS.monitor_port} | {port for _, (_, port) in
                                                         ((n, role_of(c["args"])) for n, c in containers())} \
        == {int(p) for p in exposed}
    services = compose()["services"]
    assert services["api"]["ports"] == [f"{DEFAULTS.api_port}:{DEFAULTS.api_port}"]
    assert services["monitor"]["ports"] == [f"{DEFAULTS.monitor_port}:{DEFAULTS.monitor_port}"]
    assert "ports" not in services["worker"] and "container_name" not in services["worker"], \
        "a worker with a fixed host port or name cannot be scaled with --scale worker=N"


def test_every_probe_asks_a_path_the_app_on_that_port_serves(served: dict[str, set[str]]) -> None:
    for name, c in containers():
        role, port = role_of(c["args"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probes = [c[k] for k in ("livenessProbe", "readinessProbe") if k in c]
        assert "livenessProbe" in c, name
        for probe in probes:
            get = probe["httpGet"]
            assert ports.get(get["port"], get["port"]) == port, name
            assert get["path"] in served[role], (name, get["path"])
    api_probes = {k: c[k]["httpGet"]["path"] for n, c in containers() if n == "reliq-api"
                  for k in ("livenessProbe", "readinessProbe")}
    assert api_probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}


def test_every_compose_health_check_asks_a_path_its_service_serves(served: dict[str, set[str]]) -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    flags = " ".join(redis["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in flags
    for name in ("api", "monitor", "worker"):
        service = services[name]
        role, port = role_of(service["command"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(service["healthcheck"]["test"]))
        assert url and int(url[1]) == port and url[2] in served[role], name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        env = service["environment"]
        assert env["RELIQ_HOST"] == "0.0.0.0" and env["RELIQ_API_TOKEN"].startswith("${RELIQ_API_TOKEN:?")


def test_workers_get_more_time_to_stop_than_their_drain_timeout() -> None:
    config = next(c for c in objects("ConfigMap") if c["metadata"]["name"] == "reliq-config")["data"]
    drain = float(config.get("RELIQ_DRAIN_TIMEOUT", DEFAULTS.drain_timeout))
    worker = next(d for d in objects("Deployment") if d["metadata"]["name"] == "reliq-worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    grace = compose()["services"]["worker"]["stop_grace_period"]
    assert float(grace.rstrip("s")) > DEFAULTS.drain_timeout
    for pdb in objects("PodDisruptionBudget"):
        component = pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        assert f"reliq-{component}" in {d["metadata"]["name"] for d in objects("Deployment")}


def test_both_autoscalers_scale_the_worker_deployment() -> None:
    [keda] = objects("ScaledObject")
    [hpa] = objects("HorizontalPodAutoscaler")
    assert keda["spec"]["scaleTargetRef"]["name"] == "reliq-worker"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "reliq-worker"}
    assert [t["type"] for t in keda["spec"]["triggers"]] == ["prometheus", "prometheus"]
    assert "autoscaling/" + "hpa.yaml" not in (K8S / "kustomization.yaml").read_text()


def referenced_metrics() -> set[str]:
    """Every reliq_* metric named in the manifests and in docs/scaling.md.

    monitoring/ (the alert rules) is left to tests/test_rules.py: it names recording rules
    and metrics other changes announced.
    """
    texts = [p.read_text() for p in K8S.rglob("*.yaml") if "monitoring" not in p.parts]
    texts.append((ROOT / "docs" / "scaling.md").read_text())
    return {m for text in texts for m in re.findall(r"\breliq_[a-z_]+\b", text)}


async def test_every_metric_the_autoscalers_query_is_on_the_monitors_metrics(
    queue: Queue, settings: Settings
) -> None:
    app = monitor.create_app(queue, settings)
    async with TestClient(TestServer(app)) as http:
        await queue.enqueue("noop")
        await app[monitor.SAMPLER].sample_once()
        await app[monitor.SAMPLER].sample_once()
        body = await (await http.get("/metrics")).text()
    exported = {re.split(r"[{ ]", line)[0] for line in body.splitlines() if line and not line.startswith("#")}
    wanted = referenced_metrics()
    assert {"reliq_queue_lag_seconds", "reliq_desired_workers"} <= wanted
    assert wanted <= exported, f"not exported: {wanted - exported}"


def test_compose_commands_are_valid_reliq_command_lines() -> None:
    from click.testing import CliRunner

    from reliq.cli import main

    commands = [compose()["services"][s]["command"] for s in ("api", "monitor", "worker")]
    commands += [c["args"] for _, c in containers()]
    for command in commands:
        # --help after the real flags: click parses them all, then prints help and stops
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (shlex.join(command), result.output)
