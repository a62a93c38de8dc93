"""The package a user installs: built, checked, installed into a clean venv, and run from there.

``python -m build`` makes the sdist, then the wheel from the sdist (so a file missing from
the sdist fails here too). It builds with the dev venv's setuptools (``--no-isolation``:
seconds instead of two fresh build environments); the isolated build, with what
``[build-system]`` asks for from PyPI, is the one every ``pip install -e`` (``make run``,
``make dev``) already runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import reliq
from reliq.redis_server import answers, free_port
from tests import procs
from tests.util import wait_until

# The first test also builds the package and installs it with its dependencies from PyPI; the
# module's tests run in one process of a parallel run (pytest -n), so that is done once.
pytestmark = [pytest.mark.timeout(360), pytest.mark.xdist_group("package")]

#: Run by the clean venv's Python: every Lua script compiles on a real Redis, the
#: dashboard's files are inside, types ship, and the version is the one pip installed.
CHECK = """
import importlib.metadata, importlib.resources, json, sys
import redis, reliq
from reliq import scripts
client = redis.Redis.from_url(sys.argv[1])
shas = {name: client.script_load(scripts.source(name)) for name in scripts.NAMES}
files = importlib.resources.files("reliq")
print(json.dumps({
    "file": reliq.__file__,
    "version": reliq.__version__,
    "installed": importlib.metadata.version("reliq"),
    "license": importlib.metadata.metadata("reliq")["License-Expression"],
    "scripts": sorted(shas),
    "lua": sorted(p.name for p in (files / "lua").iterdir()),
    "index": "<html" in (files / "static" / "index.html").read_text(),
    "static": sorted(p.name for p in (files / "static").iterdir()),
    "typed": (files / "py.typed").is_file(),
}))
"""

#: A user's module with one type error that mypy can only see through reliq's own types.
USER = """
import reliq

queue: int = reliq.Settings().queue
"""


def run(args: list[str | Path], cwd: Path, timeout: float = 120) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, built from a fresh copy of the repository."""
    tmp = tmp_path_factory.mktemp("package")
    src = procs.repo_copy(tmp / "src")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src], cwd=tmp)
    (sdist,) = (tmp / "dist").glob("reliq-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("reliq-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv (no system site-packages) with the wheel and its dependencies installed by pip.

    pip runs from outside (``--python``), which spares the venv a pip of its own: seconds.
    """
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
         "--disable-pip-version-check", built[1]], cwd=venv, timeout=300)
    return venv


def test_the_sdist_and_the_wheel_pass_twine_check(built: tuple[Path, Path]) -> None:
    out = run([sys.executable, "-m", "twine", "check", "--strict", *built], cwd=built[0].parent)
    assert out.count("PASSED") == 2, out


def test_the_installed_wheel_runs_and_carries_its_scripts_static_files_and_types(
    venv: Path, redis_url: str, tmp_path: Path
) -> None:
    # run from an empty directory, so only the installed package can be imported
    got = json.loads(run([venv / "bin" / "python", "-c", CHECK, redis_url], cwd=tmp_path))
    assert Path(got["file"]).is_relative_to(venv), got["file"]
    assert got["version"] == got["installed"] == reliq.__version__
    assert got["license"] == "MIT"
    assert got["scripts"] == sorted(reliq.scripts.NAMES)
    source = procs.ROOT / "reliq"
    assert got["lua"] == sorted(p.name for p in (source / "lua").iterdir())
    assert got["index"] and got["static"] == sorted(p.name for p in (source / "static").iterdir())
    assert got["typed"]
    assert "Usage: reliq all" in run([venv / "bin" / "reliq", "all", "--help"], cwd=tmp_path)
    assert run([venv / "bin" / "reliq", "--version"], cwd=tmp_path) == f"reliq {reliq.__version__}\n"


def test_a_users_mypy_sees_reliqs_types_through_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(USER)
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(venv / "bin" / "python"), "--config-file",
         "mypy.ini", "--cache-dir", str(tmp_path / "cache"), "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    # without py.typed mypy says "module is installed, but missing library stubs or py.typed marker"
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in result.stdout, (
        result.stdout + result.stderr)
    assert result.stdout.count("error:") == 1, result.stdout


def test_reliq_all_from_the_installed_wheel_serves_the_dashboard_and_runs_a_task(
    venv: Path, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    api_port, monitor_port = free_port(), free_port()
    log = tmp_path / "all.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([venv / "bin" / "reliq", "all", "--redis-url", redis_url, "--queue", queue_name,
                                 "--api-port", str(api_port), "--monitor-port", str(monitor_port)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (answers("127.0.0.1", api_port) and answers("127.0.0.1", monitor_port))
                   or proc.poll() is not None, timeout=20, what="reliq all listening")
        assert proc.poll() is None, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/", timeout=5) as page:
            assert b"<html" in page.read()
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/task", method="POST",
                                         data=b'{"type": "noop"}', headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            task_url = f"http://127.0.0.1:{api_port}/task/{json.loads(resp.read())['task_id']}"

        def state() -> str:
            with urllib.request.urlopen(task_url, timeout=5) as resp:
                return str(json.loads(resp.read())["state"])

        wait_until(lambda: state() == "succeeded", what="the task succeeded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        procs.stop(proc)
