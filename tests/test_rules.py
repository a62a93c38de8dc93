"""deploy/prometheus/reliq-rules.yaml: valid for promtool, unit-tested, the same as the
Operator's PrometheusRule, and written against metrics reliq really exports."""

from __future__ import annotations

import subprocess

import yaml

from reliq.queue import Queue
from reliq.settings import Settings
from tests.promkit import (
    PROMETHEUS_RULE,
    ROOT,
    RULE_TESTS,
    RULES,
    exported,
    groups,
    metric_names,
    rules,
    tool,
)


def promtool(*args: str) -> str:
    done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=RULES.parent, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_file_passes_promtool_check() -> None:
    out = promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_rule_unit_tests_pass_promtool_test() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_fires_in_a_unit_test_and_stays_quiet_in_another() -> None:
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    alerts = {r["alert"] for r in rules() if "alert" in r}
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    assert fired == alerts, f"never seen firing: {alerts - fired}"
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts - quiet <= {"ReliqDeadLetterEvicted", "ReliqMonitorDown"}, alerts - quiet


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            notes = rule["annotations"]
            assert {"summary", "description", "runbook"} <= set(notes), rule["alert"]
            assert all(notes[k].strip() for k in ("summary", "description", "runbook")), rule["alert"]


def test_operator_prometheus_rule_carries_the_same_groups_as_the_rules_file() -> None:
    [rule] = list(yaml.safe_load_all(PROMETHEUS_RULE.read_text()))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == groups(), \
        "deploy/kubernetes/monitoring/prometheusrule.yaml is stale: python deploy/prometheus/prometheusrule.py"


def test_operator_service_monitor_scrapes_the_monitor_service() -> None:
    [sm] = list(yaml.safe_load_all((PROMETHEUS_RULE.parent / "servicemonitor.yaml").read_text()))
    manifest = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "monitor.yaml").read_text()))
    services = [d for d in manifest if d["kind"] == "Service"]
    [svc] = [s for s in services if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert {e["path"] for e in sm["spec"]["endpoints"]} == {"/metrics"}
    [monitor] = [d for d in manifest if d["kind"] == "Deployment"]
    [container] = monitor["spec"]["template"]["spec"]["containers"]
    secrets = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]): e["name"]
               for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for endpoint in sm["spec"]["endpoints"]:  # the token Prometheus sends is one the monitor reads
        credentials = endpoint["authorization"]["credentials"]
        assert secrets[credentials["name"], credentials["key"]] == "RELIQ_READ_TOKEN"


async def test_every_metric_the_rules_use_is_on_metrics(queue: Queue, settings: Settings) -> None:
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    have = await exported(queue, settings)
    assert {"reliq_tasks_total", "reliq_task_wait_seconds_bucket", "reliq_queue_lag_seconds"} <= used & have
    assert used <= have, f"not exported: {used - have}"
