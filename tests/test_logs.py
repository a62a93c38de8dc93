"""``--log-format json``: every role writes one JSON object a line; a worker's lines carry
the task's and the worker's fields; per-task events are DEBUG, never INFO.

Real ``reliq`` subprocesses; the handlers that log are in tests/apps/chatty.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from reliq import logs
from reliq.client import Client
from reliq.redis_server import answers, free_port
from reliq.settings import Settings
from reliq.worker.supervisor import Supervisor
from tests import procs
from tests.util import wait_until


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as one JSON object (fails on the first line that is not)."""
    out = []
    for line in text.splitlines():
        obj = orjson.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def burst_worker(redis_url: str, queue: str, *flags: str,
                 env: dict[str, str] | None = None) -> str:
    """Run ``reliq work --burst`` to the end of the queue; its whole output (stdout and stderr)."""
    done = subprocess.run([sys.executable, "-m", "reliq", "work", "--redis-url", redis_url, "--queue", queue,
                           "--burst", "--app", "tests.apps.chatty", "--retry-base", "0.01", *flags],
                          cwd=procs.ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def load(redis_url: str, queue: str) -> dict[str, str]:
    """One task of each kind; their ids by kind."""
    with Client(redis_url, queue) as client:
        return {"ok": client.enqueue("noop"), "async": client.enqueue("chatty-async", "hi"),
                "sync": client.enqueue("chatty-sync", "ho"), "dead": client.enqueue("fail", max_retries=1)}


def test_json_worker_writes_only_json_lines_with_the_task_and_worker_fields(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    ids = load(redis_url, queue_name)
    lines = json_lines(burst_worker(redis_url, queue_name, "--log-format", "json", "--log-level", "DEBUG"))
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    workers = {line["worker"] for line in lines if "worker" in line}
    assert len(workers) == 1
    [worker] = workers
    # the handlers' own lines carry the task they ran for, in an async handler and in the thread pool
    said = {line["message"]: line for line in lines if line["logger"] == "chatty"}
    for message, kind in (("async handler says hi", "async"), ("sync handler says ho", "sync")):
        line = said[message]
        assert line["task_id"] == ids[kind] and line["queue"] == queue_name and line["worker"] == worker
        assert line["type"] == f"chatty-{kind}" and line["attempt"] == 1 and line["level"] == "warning"
    # one DEBUG line as each run starts and one as it ends, with the outcome
    events = [line for line in lines if line["logger"] == "reliq.worker.worker" and "task_id" in line]
    assert {line["level"] for line in events} == {"debug"}
    ended = {(line["task_id"], line["attempt"], line["outcome"]) for line in events if "outcome" in line}
    assert ended == {(ids["ok"], 1, "ok"), (ids["async"], 1, "ok"), (ids["sync"], 1, "ok"),
                     (ids["dead"], 1, "error"), (ids["dead"], 2, "error")}
    assert all(line["type"] and line["queue"] == queue_name and line["worker"] == worker for line in events)
    assert all(isinstance(line["duration_ms"], int) for line in events if "outcome" in line)
    assert len([line for line in events if "outcome" not in line]) == 5  # started


def test_at_info_a_worker_logs_no_line_per_task(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    with Client(redis_url, queue_name) as client:
        ids = client.enqueue_many([("noop", i) for i in range(50)] + [("fail", i) for i in range(3)])
    out = burst_worker(redis_url, queue_name, env={"RELIQ_LOG_FORMAT": "json"})
    lines = json_lines(out)
    assert lines and not [line for line in lines if "task_id" in line]
    assert not any(task_id in out for task_id in ids)


def started_role_output(role: str, redis_url: str, queue: str, log: Path) -> str:
    """Start ``reliq <role>``, wait until it listens, stop it; what it logged."""
    port = free_port()
    proc = procs.reliq([role, "--redis-url", redis_url, "--queue", queue, "--port", str(port)], log)
    try:
        wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, what=f"{role} listening")
        assert proc.poll() is None, log.read_text()
    finally:
        procs.stop(proc)
    return log.read_text()


def test_json_logs_from_the_env_for_the_api_and_the_monitor(
    redis_url: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELIQ_LOG_FORMAT", "json")
    for role in ("serve", "monitor"):
        lines = json_lines(started_role_output(role, redis_url, queue_name, tmp_path / f"{role}.log"))
        assert any(line["logger"] == "reliq.roles" and "http://127.0.0.1:" in line["message"] for line in lines), lines


def test_json_formatter_keeps_a_traceback_on_the_line_and_passes_extra_fields() -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed %s", ("it",),
                                                   sys.exc_info(), extra={"task_id": "01ABC", "rows": 3})
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["message"] == "failed it" and line["level"] == "error" and line["logger"] == "x"
    assert line["task_id"] == "01ABC" and line["rows"] == 3
    assert line["exception"].startswith("Traceback") and "ValueError: bad input" in line["exception"]
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_a_supervisor_passes_the_log_format_to_its_worker_processes(settings: Settings) -> None:
    command = Supervisor(settings, 2, log_level="DEBUG", log_format="json").command()
    assert command[command.index("--log-format") + 1] == "json"
    assert command[command.index("--log-level") + 1] == "DEBUG"
