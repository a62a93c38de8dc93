"""``reliq work --processes N``: children restarted when they die, all drained on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis.asyncio import Redis

from reliq import api, roles
from reliq.errors import ConfigError
from reliq.queue import Queue, text
from reliq.redis_server import free_port
from reliq.settings import Settings
from reliq.worker.supervisor import child_env, resolve_processes
from tests import procs
from tests.util import eventually, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_processes_is_a_positive_number_or_auto() -> None:
    assert resolve_processes("3") == 3
    assert resolve_processes("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(ConfigError, match="--processes"):
            resolve_processes(bad)


def test_children_load_exactly_the_supervisors_settings() -> None:
    settings = Settings(redis_url="redis://h:1/2", queue="q", apps=("a.b", "c"), drain_timeout=7.5,
                        concurrency=3, api_token="s3cret", health_port=8081)
    env = child_env(settings, {"RELIQ_PROCESSES": "auto", "PATH": "/bin"})
    assert Settings.load(env=env) == settings.replace(redis_url_given=True, health_port=0)
    assert (env["RELIQ_PROCESSES"], env["PATH"]) == ("1", "/bin")  # children never supervise in turn


def supervise(redis_url: str, queue: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``reliq work --processes 2`` with short intervals."""
    return procs.reliq(["work", "--processes", "2", "--redis-url", redis_url, "--queue", queue, "--concurrency", "4",
                        "--lease", "2", "--heartbeat-interval", "0.5", "--drain-timeout", "10", *extra], log)


async def worker_pids(redis: Redis, queue: Queue) -> set[int]:
    """Pids of the registered workers (a worker id is host:pid:random)."""
    return {int(text(w).split(":")[1]) for w in await redis.zrange(queue.keys.workers, 0, -1)}


async def eventually_holding(redis: Redis, queue: Queue) -> int:
    """The pid of a worker that holds tasks right now (so killing it leaves some to recover)."""
    holder: list[int] = []

    async def found() -> bool:
        for w in await redis.zrange(queue.keys.workers, 0, -1):
            if await redis.llen(queue.keys.processing(text(w))):
                holder.append(int(text(w).split(":")[1]))
                return True
        return False

    await eventually(found, timeout=10, what="a worker holding tasks")
    return holder[0]


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``, from /proc."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.serial
async def test_killed_child_is_restarted_and_sigterm_drains_every_child_losing_nothing(
    redis: Redis, queue: Queue, settings: Settings, tmp_path: Path
) -> None:
    ids = [await queue.enqueue("sleep", 0.5) for _ in range(60)]
    log = tmp_path / "supervisor.log"
    parent = supervise(settings.redis_url, queue.name, log)
    try:
        await eventually(lambda: _count(redis, queue, 2), timeout=20, what="two worker processes registered")
        first = await worker_pids(redis, queue)
        assert {parent_of(pid) for pid in first} == {parent.pid}
        victim = await eventually_holding(redis, queue)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            pids = await worker_pids(redis, queue)
            return victim not in pids and len(pids) == 2

        await eventually(replaced, timeout=20, what="the killed child replaced, its tasks reaped")
        for pid in await worker_pids(redis, queue):
            assert parent_of(pid) == parent.pid
        ids += [await queue.enqueue("sleep", 0.2) for _ in range(20)]
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(20) == 0, log.read_text()
    finally:
        procs.stop(parent)
    snap = await queue.snapshot()
    assert (snap["workers"], snap["processing"]) == (0, 0), "every child deregistered, holding nothing"
    assert snap["recovered"] >= 1
    states = {i: (await queue.get(i))["state"] for i in ids}
    assert set(states.values()) <= {"succeeded", "pending"}, states
    pending = {text(i) for i in await redis.lrange(queue.keys.pending, 0, -1)}
    assert {i for i, s in states.items() if s == "pending"} <= pending
    assert "restarting in" in log.read_text()

    # what was handed back runs to the end under a burst run, which exits 0 by itself
    burst = supervise(settings.redis_url, queue.name, tmp_path / "burst.log", "--burst")
    assert burst.wait(30) == 0, (tmp_path / "burst.log").read_text()
    assert [(await queue.get(i))["state"] for i in ids] == ["succeeded"] * len(ids)


async def _count(redis: Redis, queue: Queue, n: int) -> bool:
    return len(await worker_pids(redis, queue)) == n


def test_bad_processes_value_is_a_clear_cli_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "reliq", "work", "--processes", "lots"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--processes must be a whole number" in proc.stderr


def _get(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.mark.parametrize("processes", ["1", "2"])
def test_health_port_answers_from_the_worker_or_its_supervisor(
    redis_url: str, queue_name: str, tmp_path: Path, processes: str
) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    proc = procs.reliq(["work", "--processes", processes, "--health-port", str(port), "--redis-url", redis_url,
                        "--queue", queue_name], log)
    try:
        want = {"status": "ok"} if processes == "1" else {"status": "ok", "processes": 2, "running": 2,
                                                          "restarts": 0}
        wait_until(lambda: _get(port) == (200, want), timeout=20, what=f"/healthz answering {want}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        procs.stop(proc)


async def test_a_workers_liveness_port_needs_no_token_on_a_pod_address_unlike_the_api(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[str, int]] = []

    async def record(stack: object, app: object, host: str, port: int) -> None:  # no socket: we bind nothing
        started.append((host, port))

    monkeypatch.setattr(roles, "_start_site", record)
    exposed = settings.replace(host="0.0.0.0", api_token="")
    assert await roles.serve(exposed, [(roles._liveness, 8081)], work=True, burst=True) == 0
    assert started == [("0.0.0.0", 8081)]
    with pytest.raises(ConfigError, match="RELIQ_API_TOKEN"):
        await roles.serve(exposed, [(api.create_app, 8085)])


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_stops_workers_still_waiting_for_redis_and_they_exit_0(tmp_path: Path, processes: str) -> None:
    log = tmp_path / "worker.log"
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = procs.reliq(["work", "--processes", processes, "--redis-url", nowhere], log)
    try:
        wait_until(lambda: log.read_text().count("waiting for Redis") == int(processes), timeout=60,
                   what="every worker process waiting for Redis")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        procs.stop(proc)
