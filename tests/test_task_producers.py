"""Handlers as producers: ``greet.enqueue(payload)``, ``await greet.aenqueue(payload)``, typed and fork-safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import reliq
from reliq import producer
from reliq.keys import QueueKeys
from reliq.registry import REGISTRY
from tests.apps.greetings import greet, greet_async
from tests.procs import ROOT
from tests.procs import reliq as reliq_process
from tests.test_client import in_child

TYPECHECK = ROOT / "tests" / "typecheck"


@pytest.fixture
def configured(redis_url: str, queue_name: str) -> Iterator[str]:
    """The default clients pointed at the test's queue, and forgotten afterwards."""
    reliq.configure(redis_url=redis_url, queue=queue_name)
    yield queue_name
    producer.close()
    producer._defaults.settings = None


def pending(redis_url: str, queue: str) -> list[str]:
    with redis.Redis.from_url(redis_url) as raw:
        return [i.decode() for i in raw.lrange(QueueKeys(queue).pending, 0, -1)]


def test_a_decorated_handler_is_still_the_function_the_worker_calls() -> None:
    assert greet({"name": "ada"}) == "hello ada"
    assert (greet.__name__, greet.__doc__) == ("greet", "A plain handler with a result.")
    handler = REGISTRY.get("greet-async")
    assert handler is not None and handler.fn is greet_async.fn
    assert (handler.is_async, handler.wants_context) == (True, True)


def test_enqueue_goes_through_the_configured_default_client_and_survives_fork(
    configured: str, redis_url: str
) -> None:
    first = greet.enqueue({"name": "parent"})
    child = in_child(lambda: greet.enqueue({"name": "child"}, max_retries=0))
    last = greet.enqueue({"name": "later"}, idempotency_key="once")
    assert greet.enqueue({"name": "again"}, idempotency_key="once") == last
    assert pending(redis_url, configured) == [last, child, first]
    client = producer.default_client()
    assert [client.get(i)["payload"]["name"] for i in (first, child, last)] == ["parent", "child", "later"]
    assert (client.get(child)["type"], client.get(child)["max_retries"]) == ("greet", 0)


async def test_aenqueue_uses_one_client_a_loop(configured: str, redis_url: str) -> None:
    ids = [await greet_async.aenqueue({"name": str(i)}) for i in range(3)]
    assert producer.default_async_client() is producer.default_async_client()
    await producer.aclose()
    assert pending(redis_url, configured) == ids[::-1]


def test_a_process_that_only_imports_the_app_enqueues_and_a_worker_runs_it(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    script = """
import asyncio, json, sys
import reliq.producer
from tests.apps import greetings

ids = [greetings.greet.enqueue({"name": "sync"})]

async def main() -> None:
    ids.append(await greetings.greet_async.aenqueue({"name": "async"}))
    await reliq.producer.aclose()

asyncio.run(main())
print(json.dumps({"ids": ids, "worker code": sorted(m for m in sys.modules if m in
      ("reliq.worker.worker", "reliq.roles", "reliq.worker.fetcher", "reliq.api"))}))
"""
    env = dict(os.environ, REDIS_URL=redis_url, RELIQ_QUEUE=queue_name)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["worker code"] == []
    ids = report["ids"]
    assert pending(redis_url, queue_name) == ids[::-1]
    log = tmp_path / "worker.log"
    worker = reliq_process(["work", "--redis-url", redis_url, "--queue", queue_name, "--burst",
                            "--app", "tests.apps.greetings"], log)
    assert worker.wait(60) == 0, log.read_text()
    with reliq.Client(redis_url, queue_name) as client:
        records = [client.get(i) for i in ids]
    assert [(r["state"], r["result"]) for r in records] == [
        ("succeeded", "hello sync"), ("succeeded", "hello async from greet-async")]


def test_mypy_checks_the_payload_a_producer_passes_against_the_handlers_annotation() -> None:
    files = [TYPECHECK / "producer_ok.py", TYPECHECK / "producer_bad.py"]
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *map(str, files)],
                         cwd=ROOT, env=dict(os.environ, MYPYPATH=str(TYPECHECK)), capture_output=True, text=True,
                         timeout=300)
    errors = {(Path(line.split(":")[0]).name, int(line.split(":")[1]))
              for line in out.stdout.splitlines() if ": error:" in line}
    marked = {("producer_bad.py", n) for n, line in
              enumerate((TYPECHECK / "producer_bad.py").read_text().splitlines(), 1) if "  # E:" in line}
    assert errors == marked, out.stdout
