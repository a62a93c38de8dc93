"""The printed chaos report (rich tables); the same data goes to ``--json``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report: faults, task outcomes, duplicates, recovery, counter checks, verdict."""
    faults = Table(title="faults injected", show_header=False)
    for kind, n in report["faults"].items():
        faults.add_row(kind, str(n))
    faults.add_row("worker crashes (poison)", str(report["worker_crashes"]))

    t, d, rec = report["tasks"], report["duplicates"], report["recovery"]
    dead_why = ", ".join(f"{k} {v}" for k, v in t["reached"].items() if k != "succeeded")
    tasks = Table(title="tasks", show_header=False)
    for name, value in [
        ("requests sent", report["requests"]["sent"]),
        ("accepted (202)", t["accepted"]),
        ("refused", ", ".join(f"{k} {v}" for k, v in report["requests"]["refused"].items()) or "0"),
        ("succeeded", t["succeeded"]),
        ("dead-lettered", f"{t['dead']} ({dead_why})"),
        ("created without a 202", t["created_without_202"]),
        ("executions", report["executions"]),
        ("duplicated", f"{d['duplicated']} task(s), {d['duplicate_runs']} extra run(s): "
                       + (", ".join(f"{k} {v}" for k, v in d["causes"].items()) or "none")),
        ("lost", t["lost"]),
        ("wrong final state", t["wrong"]),
        ("quarantined by injected kills", len(t["quarantined_by_injected_kills"])),
        ("recovery after kill", f"median {_s(rec['median_s'])}, max {_s(rec['max_s'])} "
                                f"over {rec['measured']} kill(s) of a busy worker"),
        ("each kill", " ".join(f"{k['how']}:{_s(k['recovery_s'])}" for k in rec["kills"])),
    ]:
        tasks.add_row(name, str(value))

    counters = Table(title="counters vs task records")
    counters.add_column("check")
    counters.add_column("expected", justify="right")
    counters.add_column("actual", justify="right")
    for c in report["counters"]:
        style = "" if c["ok"] else "bold red"
        counters.add_row(c["name"], str(c["expected"]), str(c["actual"]), style=style)

    console.print(faults, tasks, counters)
    if report["ok"]:
        console.print(f"[bold green]PASS[/]: nothing lost (seed {report['seed']})")
    else:
        console.print(f"[bold red]FAIL[/] (seed {report['seed']}):")
        for p in report["problems"]:
            console.print(f"  - {p}")
