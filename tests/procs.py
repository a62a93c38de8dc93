"""Start reliq roles as real subprocesses, for crash tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from reliq.redis_server import answers
from tests.util import wait_until

ROOT = Path(__file__).resolve().parent.parent

#: libfaketime, where the ``faketime`` command preloads it from (ld.so expands ``$LIB``).
LIBFAKETIME = "/usr/$LIB/faketime/libfaketime.so.1"


def repo_copy(dest: Path) -> Path:
    """A fresh copy of the repository in ``dest``: what a clone of this work tree holds.

    The files git tracks or would add (uncommitted edits included, ignored files such as
    ``.venv`` and ``.reliq`` not), so a test sees the tree as a newcomer's clone would.
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def reliq(args: list[str], log: Path, clock: str | None = None) -> subprocess.Popen[bytes]:
    """``python -m reliq <args>`` from the repository root, output to ``log``.

    ``clock``: an offset of its clock (``+5m``: minutes ahead), by libfaketime preloaded
    into the process itself. Not under the ``faketime`` command: that forks, and waits for,
    the process, so a signal to the Popen's pid would reach faketime alone and leave the
    reliq process running on, orphaned, after the test.
    """
    env = None if clock is None else {**os.environ, "LD_PRELOAD": LIBFAKETIME, "FAKETIME": clock}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "reliq", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def worker(redis_url: str, queue: str | None, log: Path, *extra: str,
           clock: str | None = None) -> subprocess.Popen[bytes]:
    """A ``reliq work`` process with a short lease, so crashes are recovered in test time (``clock``: :func:`reliq`)."""
    queue_args = ["--queue", queue] if queue else []
    return reliq(["work", "--redis-url", redis_url, *queue_args, "--lease", "2", "--heartbeat-interval", "0.5",
                  *extra], log, clock)


def api(redis_url: str, queue: str, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A ``reliq serve`` process, returned once it listens."""
    proc = reliq(["serve", "--redis-url", redis_url, "--queue", queue, "--port", str(port), *extra], log)
    # a Python process's start-up, not a bound under test: minutes on a machine loaded past its cores
    wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, timeout=60, what="API listening")
    assert proc.poll() is None, log.read_text()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Make sure a process is gone (tests clean up after failures too)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
