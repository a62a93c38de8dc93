"""``reliq enqueue``, ``reliq task`` and ``reliq --version``, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from reliq import __version__
from reliq.keys import QueueKeys
from reliq.redis_server import free_port
from tests import procs
from tests.keyspace import keyspace
from tests.util import payload_text, wait_until

#: One process of a parallel run (pytest -n) runs the module's tests: one worker serving them.
pytestmark = pytest.mark.xdist_group("shell")


def cli(*args: str, redis_url: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m reliq <args>``, with ``REDIS_URL`` set, its output captured."""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "reliq", *args], cwd=procs.ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A queue with a real ``reliq work`` process serving it, for the tests that wait."""
    name = "shell-" + uuid.uuid4().hex[:8]
    worker = procs.worker(redis_url, name, tmp_path_factory.mktemp("shell") / "worker.log")
    try:
        import redis as sync_redis

        client = sync_redis.Redis.from_url(redis_url)
        wait_until(lambda: client.zcard(QueueKeys(name).workers) > 0, what="worker registered")
        client.close()
        yield name
    finally:
        procs.stop(worker)


def test_version_prints_the_package_version() -> None:
    result = cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"reliq {__version__}")


async def test_enqueue_prints_the_id_of_the_task_it_wrote(redis_url: str, queue_name: str, redis: Redis) -> None:
    result = cli("enqueue", "noop", '{"n": 1}', "--queue", queue_name, "--delay", "60",
                 "--idempotency-key", "k1", redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    space = await keyspace(redis, queue_name)
    assert (space["delayed"], payload_text(space[f"task:{task_id}"])) == ([task_id], '{"n":1}')
    again = cli("enqueue", "noop", '{"n": 1}', "--queue", queue_name, "--idempotency-key", "k1", redis_url=redis_url)
    assert again.stdout.strip() == task_id


def test_enqueue_wait_prints_the_result_and_exits_0(redis_url: str, served: str) -> None:
    result = cli("enqueue", "email-notification", '{"to": "a@b.co"}', "--queue", served, "--wait", "30",
                 redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"sent_to": "a@b.co"}


def test_enqueue_wait_on_a_task_that_dies_prints_its_error_and_exits_1(redis_url: str, served: str) -> None:
    result = cli("enqueue", "fail", "7", "--queue", served, "--max-retries", "0", "--wait", redis_url=redis_url)
    assert result.returncode == 1
    assert "is dead (error): RuntimeError: fail task always fails (payload 7)" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["noop", "{not json"], "the payload is not valid JSON"),
    ([" "], "'type' must be a non-empty string"),
    (["noop", "--run-at", "tomorrow"], "'run_at' must be an RFC 3339 time"),
    (["noop", "--delay", "-1"], "'delay_s' must be a number"),
])
async def test_enqueue_bad_input_exits_2_and_writes_nothing(
    redis_url: str, queue_name: str, redis: Redis, args: list[str], message: str
) -> None:
    result = cli("enqueue", *args, "--queue", queue_name, redis_url=redis_url)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert await keyspace(redis, queue_name) == {}


def test_enqueue_with_redis_unreachable_says_so_without_a_traceback() -> None:
    result = cli("enqueue", "noop", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 3
    assert "reliq: cannot reach Redis at redis://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_task_prints_the_record_and_exits_1_when_there_is_none(redis_url: str, queue_name: str) -> None:
    task_id = cli("enqueue", "noop", "[1, 2]", "--queue", queue_name, redis_url=redis_url).stdout.strip()
    result = cli("task", task_id, "--queue", queue_name, redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout)
    assert (record["task_id"], record["state"], record["payload"]) == (task_id, "pending", [1, 2])
    missing = cli("task", "nope", "--queue", queue_name, redis_url=redis_url)
    assert missing.returncode == 1
    assert "no task 'nope' in queue" in missing.stderr


def test_task_wait_runs_out_with_exit_124(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    task_id = cli("enqueue", "noop", "--queue", queue_name, redis_url=redis_url).stdout.strip()
    result = cli("task", task_id, "--queue", queue_name, "--wait", "0.2", redis_url=redis_url)
    assert (result.returncode, orjson.loads(result.stdout)["state"]) == (124, "pending")
