"""OpenTelemetry across real processes: a task enqueued inside a span (through ``POST /task``
with a ``traceparent``, or ``Client.enqueue``) is run by a ``reliq work`` process in one
span per attempt, children of that span, with the handler's own spans inside them.

The worker's spans come from the SDK's in-memory exporter of tests/apps/traced.py (an
application that set its own tracer provider); the console exporter shows that
``OTEL_TRACES_EXPORTER=console`` traces ``reliq serve`` and ``reliq work`` with no code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from reliq import tracing
from reliq.client import Client
from reliq.queue import Queue
from reliq.redis_server import answers, free_port, terminate
from reliq.settings import Settings
from reliq.worker import Worker
from tests import procs
from tests.util import wait_until

#: A tracer of the test process's own, not installed globally (other tests must not trace).
TRACER = TracerProvider().get_tracer("test")


def work(redis_url: str, queue: str, *flags: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``reliq work --burst`` to the end of the queue (retries included)."""
    done = subprocess.run([sys.executable, "-m", "reliq", "work", "--redis-url", redis_url, "--queue", queue,
                           "--burst", "--retry-base", "0.01", *flags], cwd=procs.ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def post_task(port: int, body: dict[str, Any], traceparent: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/task", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "traceparent": traceparent})
    with urllib.request.urlopen(request, timeout=10) as r:
        return str(json.loads(r.read())["task_id"])


def hex_ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def test_each_attempt_is_a_consumer_span_child_of_where_the_task_was_enqueued(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    port = free_port()
    api = procs.api(redis_url, queue_name, port, tmp_path / "api.log")
    try:
        with TRACER.start_as_current_span("checkout") as checkout:
            via_api = post_task(port, {"type": "charge-card", "payload": {"order": 1}},
                                f"00-{hex_ids(checkout)[0]}-{hex_ids(checkout)[1]}-01")
    finally:
        procs.stop(api)
    with TRACER.start_as_current_span("signup") as signup, Client(redis_url, queue_name) as client:
        via_client = client.enqueue("charge-card", {"order": 2})
    spans_file = tmp_path / "spans.json"
    work(redis_url, queue_name, "--app", "tests.apps.traced", env={"RELIQ_TEST_SPANS": str(spans_file)})
    spans = json.loads(spans_file.read_text())

    for task_id, parent in ((via_api, checkout), (via_client, signup)):
        trace_id, parent_id = hex_ids(parent)
        attempts = sorted((s for s in spans if s["attributes"].get("messaging.message.id") == task_id),
                          key=lambda s: s["attributes"]["reliq.task.attempt"])
        assert [(s["attributes"]["reliq.task.attempt"], s["attributes"]["reliq.task.outcome"], s["status"])
                for s in attempts] == [(1, "error", "ERROR"), (2, "ok", "UNSET")]
        for s in attempts:
            assert s["name"] == f"process {queue_name}" and s["kind"] == "CONSUMER"
            assert s["trace_id"] == trace_id and s["parent_id"] == parent_id  # one trace, the right parent
            assert s["attributes"] | {"reliq.task.attempt": 0, "reliq.task.outcome": ""} == {
                "messaging.system": "reliq", "messaging.operation.type": "process",
                "messaging.operation.name": "process", "messaging.destination.name": queue_name,
                "messaging.message.id": task_id, "reliq.task.type": "charge-card",
                "reliq.task.attempt": 0, "reliq.task.outcome": ""}
            # the handler's own span nests inside its attempt
            [inner] = [c for c in spans if c["parent_id"] == s["span_id"]]
            assert inner["name"] == "call the bank" and inner["trace_id"] == trace_id
    assert len(spans) == 8  # 2 tasks x 2 attempts x (attempt + handler span): nothing else


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the SDK's console exporter printed (one indented JSON object each)."""
    decoder, spans, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        span, i = decoder.raw_decode(text, i)
        spans.append(span)
    return spans


def test_otel_traces_exporter_console_traces_the_api_and_the_worker_with_no_code(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "api.out"
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with log.open("wb") as out:
        api = subprocess.Popen([sys.executable, "-m", "reliq", "serve", "--redis-url", redis_url, "--queue",
                                queue_name, "--port", str(port)], cwd=procs.ROOT, stdout=out,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: answers("127.0.0.1", port) or api.poll() is not None, timeout=60,
                   what="API listening")
        with TRACER.start_as_current_span("checkout") as checkout:
            trace_id, caller = hex_ids(checkout)
            task_id = post_task(port, {"type": "noop"}, f"00-{trace_id}-{caller}-01")
    finally:
        terminate(api)  # SIGTERM: the SDK flushes its batch at exit
    [send] = console_spans(log.read_text())
    assert send["name"] == f"send {queue_name}" and send["kind"] == "SpanKind.PRODUCER"
    assert send["context"]["trace_id"] == f"0x{trace_id}" and send["parent_id"] == f"0x{caller}"
    assert send["resource"]["attributes"]["service.name"] == "reliq-api"

    done = work(redis_url, queue_name, env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "billing"})
    [process] = console_spans(done.stdout)
    assert process["name"] == f"process {queue_name}" and process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{trace_id}" and process["parent_id"] == send["context"]["span_id"]
    assert process["attributes"]["messaging.message.id"] == task_id
    assert process["resource"]["attributes"]["service.name"] == "billing"


def test_a_malformed_traceparent_is_ignored_as_w3c_says() -> None:
    assert tracing.valid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    for bad in ("", "garbage", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"):
        assert tracing.valid(bad) == ""


async def test_without_opentelemetry_nothing_is_stored_or_traced(
    queue: Queue, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "trace", None)  # as if the extra were not installed
    with TRACER.start_as_current_span("ignored"):
        assert tracing.current() == "" and not tracing.on()
    task_id = await queue.enqueue("noop")
    await Worker(queue, settings, burst=True).run()
    assert (await queue.get(task_id))["state"] == "succeeded"


def test_reliq_imports_and_runs_without_the_opentelemetry_package() -> None:
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "from reliq import tracing, worker, api, roles\n"
            "assert not tracing.on() and tracing.current() == ''\n"
            "tracing.configure('worker')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=procs.ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 0, done.stderr
