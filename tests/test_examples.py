"""The recipes in examples/ run: each app serves real requests as a subprocess, and a worker runs every task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reliq import Client
from reliq.redis_server import answers, free_port
from tests.procs import ROOT
from tests.util import wait_until

EXAMPLES = ROOT / "examples"


@contextmanager
def running(args: list[str], cwd: Path, env: dict[str, str], log: Path,
            stopped: tuple[int, ...] = (0,)) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess for the length of the block, then SIGTERM; it must exit cleanly, without a traceback.

    ``stopped``: the exit codes that mean a clean stop on SIGTERM.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{args[2]} did not stop on SIGTERM: {log.read_text()[-3000:]}") from None
    assert code in stopped, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    wait_until(lambda: answers("127.0.0.1", port) or proc.poll() is not None, timeout=30, what="server listening")
    assert proc.poll() is None, log.read_text()


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def env_for(redis_url: str, queue: str) -> dict[str, str]:
    return dict(os.environ, REDIS_URL=redis_url, RELIQ_QUEUE=queue)


def worker_args(redis_url: str, queue: str) -> list[str]:
    """``reliq work`` run from the example's folder, serving its ``tasks`` module."""
    return [sys.executable, "-m", "reliq", "work", "--redis-url", redis_url, "--queue", queue, "--app", "tasks",
            "--concurrency", "8", "--drain-timeout", "5"]


def worked_off(redis_url: str, queue: str, cwd: Path, port: int, ids: list[str], logs: Path) -> list[Any]:
    """Run a worker from the example's folder until every id has succeeded; their results.

    The app serves the last record too, from its own client.
    """
    env = env_for(redis_url, queue)
    with running(worker_args(redis_url, queue), cwd, env, logs / "worker.log"), Client(redis_url, queue) as client:
        wait_until(lambda: all(client.get(i)["state"] == "succeeded" for i in ids), timeout=30,
                   what="every task succeeded")
        results = [client.get(i)["result"] for i in ids]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/task/{ids[-1]}", timeout=10) as resp:
        assert json.loads(resp.read())["state"] == "succeeded"
    return results


def test_flask_under_gunicorn_preload_two_workers_enqueues_from_both_forks(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    cwd, port = EXAMPLES / "flask_gunicorn", free_port()
    gunicorn = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind", f"127.0.0.1:{port}",
                "--graceful-timeout", "5", "app:app"]
    with running(gunicorn, cwd, env_for(redis_url, queue_name), tmp_path / "gunicorn.log") as web:
        listening(web, port, tmp_path / "gunicorn.log")
        answers_: list[tuple[int, dict[str, Any]]] = []
        with ThreadPoolExecutor(8) as pool:
            # Until both forked workers have answered (each enqueues through the Client
            # the master created and used before the fork), and at least 40 requests.
            while len(answers_) < 40 or len({a[1].get("worker_pid") for a in answers_}) < 2:
                assert len(answers_) < 400, "one gunicorn worker never answered"
                n = len(answers_)
                answers_ += pool.map(lambda i: post(port, "/signup", {"email": f"user{i}@example.com"}),
                                     range(n, n + 8))
        assert {status for status, _ in answers_} == {202}
        ids = [body["task_id"] for _, body in answers_]
        assert len(set(ids)) == len(ids)
        assert post(port, "/signup", {"email": "user0@example.com"})[1]["task_id"] == ids[0]  # idempotent
        assert post(port, "/signup", {"email": "nope"})[0] == 400
        assert worked_off(redis_url, queue_name, cwd, port, ids, tmp_path) == [
            f"welcome mail sent to user{i}@example.com" for i in range(len(ids))]


def test_starlette_under_uvicorn_enqueues_with_the_lifespans_async_client(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    cwd, port = EXAMPLES / "starlette_uvicorn", free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "info"]
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it so that its parent
    # sees the signal: -SIGTERM is its clean exit.
    with running(uvicorn, cwd, env_for(redis_url, queue_name), tmp_path / "uvicorn.log",
                 stopped=(0, -signal.SIGTERM)) as web:
        listening(web, port, tmp_path / "uvicorn.log")
        with ThreadPoolExecutor(8) as pool:
            answers_ = list(pool.map(lambda i: post(port, "/upload", {"image": f"img-{i}.png"}), range(40)))
        assert {status for status, _ in answers_} == {202}
        ids = [body["task_id"] for _, body in answers_]
        assert len(set(ids)) == len(ids) == 40
        assert post(port, "/upload", {"image": ""})[0] == 400
        assert worked_off(redis_url, queue_name, cwd, port, ids, tmp_path) == [
            {"image": f"img-{i}.png", "width": 128, "attempt": 1} for i in range(40)]
    assert "Application shutdown complete" in (tmp_path / "uvicorn.log").read_text()  # the lifespan closed the client
