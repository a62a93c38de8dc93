"""`reliq all` end to end, its private Redis, the CLI's errors and the Python client."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reliq import AsyncClient, Client, TaskNotFound
from reliq.errors import ConfigError, InvalidTask
from reliq.redis_server import answers, free_port
from reliq.roles import own_redis
from reliq.settings import Settings
from tests import procs
from tests.util import wait_until


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_reliq_all_runs_the_seed_example_end_to_end(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    api_port, monitor_port = free_port(), free_port()
    log = tmp_path / "all.log"
    proc = procs.reliq(["all", "--redis-url", redis_url, "--queue", queue_name, "--api-port", str(api_port),
                        "--monitor-port", str(monitor_port)], log)
    try:
        wait_until(lambda: answers("127.0.0.1", api_port) and answers("127.0.0.1", monitor_port),
                   what="reliq all listening")
        out = subprocess.run(
            ["curl", "-s", "-X", "POST", f"http://localhost:{api_port}/task", "-H", "Content-Type: application/json",
             "-d", '{"type": "email-notification", "payload": "user@example.com"}'],
            capture_output=True, check=True, text=True,
        ).stdout
        body = json.loads(out)
        assert body["status"] == "queued"
        task_url = f"http://127.0.0.1:{api_port}/task/{body['task_id']}"
        wait_until(lambda: get_json(task_url)["state"] == "succeeded", what="task succeeded")
        stats = get_json(f"http://127.0.0.1:{monitor_port}/stats")
        for field in ("pending", "processing", "dead_letter", "delayed", "workers", "enqueued", "succeeded",
                      "failed", "retried", "dead", "recovered"):
            assert isinstance(stats[field], int), field
        assert stats["enqueued"] == stats["succeeded"] == 1 and stats["workers"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        procs.stop(proc)


def test_own_redis_starts_a_private_server_with_aof_when_nothing_answers(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(data_dir=str(tmp_path / "data"))
    server = own_redis(settings, port=port)
    assert server is not None
    try:
        assert answers("127.0.0.1", port)
        assert "appendonly" in " ".join(server.command())
        wait_until(lambda: any((tmp_path / "data").rglob("*.aof*")), what="AOF file written")
        assert own_redis(settings, port=port) is None  # something answers now: use it
    finally:
        server.stop()
    assert own_redis(settings.replace(redis_url_given=True), port=free_port()) is None


def test_own_redis_without_a_binary_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install redis-server"):
        own_redis(Settings(data_dir=str(tmp_path / "d")), port=free_port())


@pytest.mark.parametrize(("args", "says"), [
    (["work", "--concurrency", "0"], "--concurrency"),
    (["work", "--app", "no.such.module", "--redis-url", "redis://127.0.0.1:1/0"], "cannot import --app"),
    (["work", "--queue", "a{b}", "--redis-url", "redis://127.0.0.1:1/0"], "queue name"),
])
def test_cli_refuses_bad_options_with_a_clear_error(args: list[str], says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "reliq", *args], capture_output=True, text=True, timeout=30,
                            cwd=procs.ROOT)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    env = {"REDIS_URL": "redis://env:1/0", "RELIQ_QUEUE": "q-env", "RELIQ_CONCURRENCY": "8"}
    s = Settings.load(env, concurrency=16)
    assert (s.redis_url, s.queue, s.concurrency, s.redis_url_given) == ("redis://env:1/0", "q-env", 16, True)
    assert Settings.load({}).redis_url_given is False
    with pytest.raises(ConfigError, match="RELIQ_CONCURRENCY"):
        Settings.load({"RELIQ_CONCURRENCY": "many"})


def test_sync_client_enqueues_reads_and_cancels(redis_url: str, queue_name: str) -> None:
    with Client(redis_url, queue=queue_name) as client:
        task_id = client.enqueue("noop", {"x": 1}, max_retries=1, delay=30)
        info = client.get(task_id)
        assert (info["state"], info["payload"], info["max_retries"]) == ("scheduled", {"x": 1}, 1)
        ids = client.enqueue_many([("noop", 1), {"type": "sleep", "payload": 0.1, "max_retries": 0}])
        assert [client.get(i)["type"] for i in ids] == ["noop", "sleep"]
        assert client.cancel(task_id) == "scheduled"
        other = queue_name + "-low"
        later = client.enqueue("noop", queue=other, run_at=datetime.now(UTC) + timedelta(days=30), idempotency_key="k")
        assert client.enqueue("noop", queue=other, idempotency_key="k") == later
        assert client.get(later, queue=other)["state"] == "scheduled"
        assert client.enqueue_many([("noop", 1)], queue=other)
        assert client.cancel(later, queue=other) == "scheduled"
        with pytest.raises(TaskNotFound):
            client.get(later)  # it lives in the other queue
        with pytest.raises(TaskNotFound):
            client.get("NOPE")
        with pytest.raises(InvalidTask):
            client.enqueue("")


async def test_async_client_enqueue_many_is_all_or_nothing(redis_url: str, queue_name: str) -> None:
    async with AsyncClient(redis_url, queue=queue_name) as client:
        with pytest.raises(InvalidTask):
            await client.enqueue_many([("noop", 1), ("", 2)])
        assert (await client.queue.snapshot())["enqueued"] == 0
        ids = await client.enqueue_many([("noop", i) for i in range(1000)])
        assert len(set(ids)) == 1000
        assert (await client.get(ids[-1]))["payload"] == 999


@pytest.mark.serial  # batches are what the event loop gathers in a moment: a busy CPU splits them
async def test_concurrent_enqueues_of_one_client_share_round_trips(redis_url: str, queue_name: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with AsyncClient(redis_url, queue=queue_name) as client:
        calls: list[int] = []
        send = client.queue.enqueue_specs

        async def counted(specs: Any, replicas: int = 0) -> Any:
            calls.append(len(specs))
            return await send(specs, replicas)

        monkeypatch.setattr(client.queue, "enqueue_specs", counted)
        ids = await asyncio.gather(*(client.enqueue("noop", i, idempotency_key=f"k{i % 150}") for i in range(200)))
        assert sum(calls) == 200 and len(calls) <= 5, calls
        assert ids[:50] == ids[150:]  # a repeated key stands for the task it created, in one call too
        assert len(set(ids)) == 150
        assert [(await client.get(task_id))["payload"] for task_id in ids[:150]] == list(range(150))
        good, bad = await asyncio.gather(client.enqueue("noop", 1), client.enqueue(""), return_exceptions=True)
        assert isinstance(bad, InvalidTask)  # refused alone, before it could join a batch
        assert (await client.get(str(good)))["state"] == "pending"
        assert (await client.queue.snapshot())["enqueued"] == 151
