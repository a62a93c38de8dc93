"""The package's layout keeps its promises: what a command loads, what names what."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.procs import ROOT

#: Modules an admin command has no use for: the HTTP roles and the worker.
ROLES = ("reliq.api", "reliq.roles", "reliq.worker.worker", "reliq.worker.fetcher", "reliq.monitor.app")


@pytest.mark.parametrize("args", [["stats"], ["dlq", "list"]])
def test_the_admin_commands_load_neither_the_api_nor_the_worker(redis_url: str, queue_name: str,
                                                                args: list[str]) -> None:
    """``reliq stats`` and ``reliq dlq`` read Redis: loading the roles would only slow them."""
    code = ("import json, sys\n"
            "from reliq.cli import main\n"
            "try:\n"
            f"    main({[*args, '--redis-url', redis_url, '--queue', queue_name]!r})\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            f"print(json.dumps({{'code': code, 'loaded': sorted(m for m in sys.modules if m in {ROLES!r})}}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, done.stderr
