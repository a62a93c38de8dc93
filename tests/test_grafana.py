"""deploy/grafana/reliq.json: a well-formed Grafana dashboard whose every query parses and
names only metrics reliq exports (or recording rules of deploy/prometheus/reliq-rules.yaml).

tests/test_prometheus.py also runs every query against a real Prometheus scraping reliq.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from reliq.queue import Queue
from reliq.settings import Settings
from tests.promkit import (
    dashboard,
    dashboard_queries,
    exported,
    metric_names,
    recorded,
    tool,
    with_variables,
)

PANEL_TYPES = {"row", "stat", "timeseries"}


def test_dashboard_has_the_shape_grafana_imports() -> None:
    d = dashboard()
    assert d["uid"] == "reliq" and d["title"] and isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES, p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")) and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() and t["datasource"] == p["datasource"] for t in p["targets"]), p["title"]
    # panels of one band do not overlap
    cells = [(p["gridPos"]["y"], x) for p in d["panels"] for x in range(p["gridPos"]["x"], p["gridPos"]["x"] +
                                                                         p["gridPos"]["w"])]
    assert len(cells) == len(set(cells)), "panels overlap"


def test_dashboard_offers_a_datasource_a_queue_and_a_type_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "queue", "type"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("queue", "type"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert re.fullmatch(rf"label_values\((reliq_\w+)(\{{.*\}})?, {name}\)", v["definition"]), v["definition"]
    for where, expr in dashboard_queries():
        assert 'queue=~"$queue"' in expr, f"{where} ignores the queue variable"


def test_the_per_type_panels_follow_the_type_variable() -> None:
    per_type = [(w, e) for w, e in dashboard_queries() if "queue_type" in e]
    assert len(per_type) >= 5
    assert all('type=~"$type"' in e for _, e in per_type), [w for w, e in per_type if "$type" not in e]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    # promtool parses the expressions of rules: each query becomes one
    rules = [{"record": f"dashboard:query_{i}:parse", "expr": with_variables(expr)}
             for i, (_, expr) in enumerate(queries)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "queries.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


async def test_every_metric_the_dashboard_names_is_exported_or_a_recording_rule(
    queue: Queue, settings: Settings
) -> None:
    d = dashboard()
    texts = [e for _, e in dashboard_queries()] + [v["definition"] for v in d["templating"]["list"][1:]]
    names = {n for text in texts for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text)
             if n.startswith("reliq_") or (":" in n and "reliq_" in n)}
    used_rules = {n for n in names if ":" in n}
    assert used_rules <= recorded(), f"not a recording rule: {used_rules - recorded()}"
    raw = set().union(*(metric_names(t) for t in texts))
    have = await exported(queue, settings)
    assert raw <= have, f"not exported: {raw - have}"
    # what the issue asks the dashboard to show
    shown = " ".join(texts)
    for needle in ("reliq_queue_depth", "reliq_queue_lag_seconds", "queue_type:reliq_tasks:rate5m",
                   "queue_type:reliq_task_wait_seconds:quantile5m", "queue_type:reliq_task_run_seconds:quantile5m",
                   "queue_type:reliq_tasks_failure:ratio5m", 'state="dead"', "reliq_workers",
                   "reliq_redis_memory_used_bytes", "reliq_desired_workers"):
        assert needle in shown, needle
