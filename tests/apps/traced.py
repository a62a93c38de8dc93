"""A worker application that set its own tracer provider: the SDK's in-memory exporter.

Loaded by ``reliq work --app tests.apps.traced`` (tests/test_tracing.py). At exit it
writes the spans it recorded to the JSON file named by ``RELIQ_TEST_SPANS``.
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import reliq

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


def span_record(span: Any) -> dict[str, Any]:
    """What a test checks of one finished span."""
    ctx, parent = span.get_span_context(), span.parent
    return {"name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent else None, "kind": span.kind.name,
            "status": span.status.status_code.name, "attributes": dict(span.attributes or {}),
            "service": span.resource.attributes.get("service.name")}


@atexit.register
def _dump() -> None:
    path = os.environ.get("RELIQ_TEST_SPANS")
    if path:
        with open(path, "w") as f:
            json.dump([span_record(s) for s in EXPORTER.get_finished_spans()], f)


@reliq.task("charge-card")
async def charge_card(payload: Any, ctx: reliq.Context) -> str:
    """Fail the first attempt, succeed the second; each in a span of the handler's own."""
    with trace.get_tracer("shop").start_as_current_span("call the bank"):
        if ctx.attempt == 1:
            raise RuntimeError("the bank timed out")
    return "charged"
