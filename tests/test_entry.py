"""The ``reliq`` command owns SIGTERM and SIGINT from its first instant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import reliq
from tests.procs import ROOT
from tests.util import wait_until


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_worker_starts_exits_cleanly(redis_url: str, sig: signal.Signals, tmp_path: Path) -> None:
    """A deploy that stops a worker it has just started: not a crash (-15), not a traceback."""
    marker = tmp_path / "importing"
    proc = subprocess.Popen([sys.executable, "-m", "reliq", "work", "--redis-url", redis_url, "--queue", "entry",
                             "--app", "tests.apps.slow_import"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "RELIQ_TEST_IMPORTING": str(marker)})
    wait_until(marker.exists, timeout=30, what="the app being imported")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out, out.decode()
    assert b"while starting: exiting" in out


def test_import_reliq_loads_no_role() -> None:
    """Cheap to import: the public names are loaded on first use."""
    code = "import sys, reliq; assert 'reliq.client' not in sys.modules and 'aiohttp' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_every_public_name_resolves() -> None:
    assert sorted(reliq.__all__) == sorted(reliq._EXPORTS)
    assert all(getattr(reliq, name) is not None for name in reliq.__all__)
    with pytest.raises(AttributeError):
        reliq.no_such_name  # noqa: B018
