"""Write deploy/kubernetes/monitoring/prometheusrule.yaml from reliq-rules.yaml.

The PrometheusRule carries the same groups as the plain rules file, so the two never
drift: edit reliq-rules.yaml, run ``python deploy/prometheus/prometheusrule.py``, and
tests/test_rules.py checks that they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "reliq-rules.yaml"
TARGET = HERE.parent / "kubernetes" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# reliq's recording and alerting rules for the Prometheus Operator (kube-prometheus-stack).
# GENERATED from deploy/prometheus/reliq-rules.yaml by deploy/prometheus/prometheusrule.py:
# edit that file and regenerate. Not in kustomization.yaml (it needs the Operator's CRDs):
#   kubectl apply -f deploy/kubernetes/monitoring/
# The Operator picks it up when its ruleSelector matches these labels (kube-prometheus-stack's
# default selects its Helm release: add `release: <your release>`, or set
# ruleSelectorNilUsesHelmValues=false).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runbooks, long expressions) as literal blocks, as in the source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule object holding ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "reliq", "labels": {"app.kubernetes.io/name": "reliq", "role": "alert-rules"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    """The text of the PrometheusRule file."""
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
