"""The first run on a clean machine: ``make run`` and the README's Quick start, as a newcomer does them.

Every other test hands reliq a Redis URL or a temporary data dir, and the development
machine has its own Redis on 6379, so the default path (no Redis there, a private
``redis-server`` in the relative ``./.reliq/redis``) would otherwise never run. These
tests run it inside a network namespace of their own (see ``tests/netns.py``), from a
fresh copy of the repository, and stop it with a Ctrl-C as a terminal sends it: SIGINT
to the whole foreground process group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from reliq.keys import QueueKeys
from reliq.redis_server import RedisServer, free_port
from tests import procs
from tests.netns import Namespace, unavailable
from tests.util import wait_until

README = (procs.ROOT / "README.md").read_text()


def test_a_private_redis_started_from_a_relative_data_dir_finds_its_log_and_aof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = RedisServer("./.reliq/redis").start()  # redis-server chdirs into --dir before opening its files
    try:
        command = server.command()
        for flag in ("--dir", "--logfile"):
            assert Path(command[command.index(flag) + 1]).is_absolute(), command
        assert (tmp_path / ".reliq" / "redis" / "redis.log").stat().st_size > 0
        wait_until(lambda: any((tmp_path / ".reliq" / "redis").rglob("*.aof*")), what="AOF written")
    finally:
        server.stop()


def test_a_second_reliq_all_on_the_same_ports_says_what_is_wrong_without_a_traceback(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # what the first `make run` holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "reliq", "all", "--redis-url", redis_url, "--queue",
                                 queue_name, "--api-port", str(port), "--monitor-port", str(free_port())],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"reliq: cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with Namespace() as ns:
        yield ns


def inside(ns: Namespace, command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` run by bash inside the namespace, output captured."""
    return subprocess.run(ns.command(["bash", "-c", command]), capture_output=True, text=True, timeout=30, env=env)


def answering(ns: Namespace, url: str) -> bool:
    return inside(ns, f"curl -sf -o /dev/null {url}").returncode == 0


def task_state(ns: Namespace, command: str) -> str:
    out = inside(ns, command).stdout
    return str(json.loads(out)["state"]) if out.startswith("{") else ""


def ctrl_c(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGINT to the process group, as a terminal's Ctrl-C; the exit code (killed if it hangs)."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def worrying(output: str) -> list[str]:
    """Lines a newcomer would stop at: warnings, errors, tracebacks, notices, deprecations.

    ``***`` is how make reports a recipe that failed (``Error 1``) or died of a signal.
    """
    bad = re.compile(r"warn|error|traceback|deprecat|notice|fatal|!!|\*\*\*", re.IGNORECASE)
    return [line for line in output.splitlines() if bad.search(line)]


def test_reliq_all_with_the_default_data_dir_starts_its_own_redis_where_nothing_listens(
    namespace: Namespace, tmp_path: Path
) -> None:
    repo = procs.repo_copy(tmp_path / "reliq")
    log = tmp_path / "all.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIQ_") and k != "REDIS_URL"}
    with log.open("wb") as out:
        proc = subprocess.Popen(namespace.command([sys.executable, "-m", "reliq", "all"]), cwd=repo, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answering(namespace, "localhost:8085/healthz") or proc.poll() is not None,
                   timeout=30, what="reliq all listening")
        assert proc.poll() is None, log.read_text()
        sent = inside(namespace, "curl -s -X POST localhost:8085/task -H 'Content-Type: application/json' "
                                 """-d '{"type": "sleep", "payload": 1}'""")
        task_id = json.loads(sent.stdout)["task_id"]
        wait_until(lambda: task_state(namespace, f"curl -s localhost:8085/task/{task_id}") == "processing",
                   what="the task running")
        assert ctrl_c(proc, 30) == 0, log.read_text()
    finally:
        procs.stop(proc)
    output = log.read_text()
    data_dir = repo / ".reliq" / "redis"
    assert f"no Redis on localhost:6379: started redis-server with AOF in {data_dir}" in output
    assert (data_dir / "redis.log").exists() and any(data_dir.rglob("*.aof*"))
    # Ctrl-C reached reliq only: its Redis outlived the drain, so the running task finished
    # and nothing warned about an unreachable Redis. Then reliq stopped it.
    assert worrying(output) == [], output
    assert namespace.pids() == [], "a process outlived reliq all"
    server = RedisServer(data_dir).start()  # the same AOF again: the task's record says it finished
    try:
        with redis.Redis.from_url(server.url) as client:
            assert client.hget(QueueKeys("default").task(task_id), "state") == b"succeeded"
    finally:
        server.stop()


def readme_block(starting: str, lang: str = "sh") -> str:
    """The README's fenced ``lang`` block whose text starts with ``starting``, verbatim."""
    for block in re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL):
        if block.startswith(starting):
            return str(block)
    raise AssertionError(f"README.md has no ```{lang} block starting with {starting!r}")


def newcomer_env(tmp_path: Path, proxy: str) -> dict[str, str]:
    """A login shell's environment, not a developer's: no venv on PATH, no reliq settings.

    pip reads no configuration file, as on a machine set up by nobody (this one points
    pip at local mirrors), and reaches PyPI through the namespace's proxy.
    """
    venv_bins = {str(procs.ROOT / ".venv" / "bin"), os.path.dirname(sys.executable)}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELIQ_", "PYTEST", "VIRTUAL_ENV", "PYTHON", "PIP_DISABLE"))
           and k not in ("REDIS_URL", "CONDA_PREFIX")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env.update(PIP_CONFIG_FILE=os.devnull, HTTPS_PROXY=proxy, https_proxy=proxy, CURL_HOME=str(tmp_path))
    # The README's curl is run verbatim; this makes curl print the status code after the body.
    (tmp_path / ".curlrc").write_text('write-out = "\\n%{http_code}\\n"\n')
    return env


@pytest.mark.timeout(420)  # a first install from PyPI: half a minute with pip's cache, minutes without
def test_the_readme_quick_start_works_for_a_newcomer(namespace: Namespace, tmp_path: Path) -> None:
    """A fresh clone, ``make run`` with nothing on 6379, the README's curl: 202, succeeded; Ctrl-C: a clean stop.

    GNU make, given a Ctrl-C, waits for its recipe and then dies of the same signal (so a
    script that called it stops too): its own status is -SIGINT whatever reliq did. reliq's
    exit code shows in what make prints: ``make: *** [...] Error N`` for anything but 0.
    """
    repo = procs.repo_copy(tmp_path / "reliq")
    post = readme_block("curl -X POST http://localhost:8085/task")
    shown: dict[str, Any] = json.loads(readme_block('{"status"', "json"))
    get = re.search(r"`(curl localhost:8085/task/<task_id>)`", README)
    assert get, "README.md no longer shows how to read a task back"
    log = tmp_path / "make-run.log"
    started = time.monotonic()
    with namespace.proxy() as proxy:
        env = newcomer_env(tmp_path, proxy)
        with log.open("wb") as out:
            proc = subprocess.Popen(namespace.command(["make", "run"]), cwd=repo, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: answering(namespace, "localhost:8085/healthz") or proc.poll() is not None,
                       timeout=360, interval=0.5, what="make run serving")
            assert proc.poll() is None, log.read_text()
            ready = time.monotonic() - started
            sent = inside(namespace, post, env)
            body, _, status = sent.stdout.strip().rpartition("\n")
            assert status == "202", sent.stdout + sent.stderr
            answer = json.loads(body)
            assert answer.keys() == shown.keys() and {k: v for k, v in answer.items() if k != "task_id"} == {
                k: v for k, v in shown.items() if k != "task_id"}, (answer, shown)
            read = get.group(1).replace("<task_id>", answer["task_id"])
            wait_until(lambda: task_state(namespace, read) == "succeeded", what="the README's task succeeded")
            transcript = f"$ {post}{sent.stdout}\n$ {read}\n{inside(namespace, read).stdout}"
            code = ctrl_c(proc, 30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    print(f"--- make run in a fresh clone, in a namespace where nothing listens on 6379 "
          f"(serving after {ready:.0f}s, {time.monotonic() - started:.0f}s in all) ---\n{output}"
          f"--- in another terminal (the README's commands, verbatim) ---\n{transcript}")
    assert code == -signal.SIGINT, output
    assert namespace.pids() == [], "a process (redis-server?) outlived make run"
    assert f"started redis-server with AOF in {repo / '.reliq' / 'redis'}" in output
    assert "producer API (POST /task) on http://127.0.0.1:8085" in output
    assert "dashboard (also /stats, /metrics) on http://127.0.0.1:8082" in output
    assert worrying(output) == [], output
