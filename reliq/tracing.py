"""OpenTelemetry traces, when the ``otel`` extra is installed (``pip install reliq[otel]``).

- A task carries the W3C ``traceparent`` of where it was enqueued: the active span of
  the code that called ``Client.enqueue``, or the ``traceparent`` header of ``POST /task``
  (through the API's own ``send`` span when tracing is on).
- The worker runs each attempt in a CONSUMER span, child of that context, named and
  described after the messaging semantic conventions (``process <queue>``,
  ``messaging.system``, ``messaging.operation.*``, ``messaging.destination.name``,
  ``messaging.message.id``) plus ``reliq.task.type``, ``.attempt`` and ``.outcome``.
  The handler runs inside it, so its own spans are children of the attempt.
- Each role configures the SDK from the standard ``OTEL_*`` variables (``configure``)
  unless the application set a tracer provider itself; with neither, nothing is traced
  and an attempt costs nothing (the worker looks once a claim).

Without the extra, every function here is a constant-time no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Iterator
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from reliq.formats import RunOutcome

log = logging.getLogger(__name__)
#: Bound once: a member looked up on its enum costs ~0.25 us on Python 3.11, and this is read a task.
OK = RunOutcome.OK

try:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError:  # the extra is not installed: tracing is off for good
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from reliq.queue import Claimed, Outcome

#: What ``messaging.system`` says.
SYSTEM = "reliq"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_tracer: Any = None
_tracer_of: Any = None


def on() -> bool:
    """True when spans go somewhere: the extra is installed and a tracer provider was set."""
    return _active_tracer() is not None


def _active_tracer() -> Any:
    """The tracer of the provider the process set (by :func:`configure` or itself), or None."""
    global _tracer, _tracer_of
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if provider is not _tracer_of:  # looked at once a provider: isinstance of an ABC is slow
        none_set = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        # nobody set one: spans would go nowhere, so none are made
        _tracer, _tracer_of = None if none_set else provider.get_tracer("reliq"), provider
    return _tracer


def valid(traceparent: str | None) -> str:
    """``traceparent`` if it is a W3C version-00 header with non-zero ids, else "" (ignored, as W3C says)."""
    if not traceparent:
        return ""
    m = _TRACEPARENT.fullmatch(traceparent.strip().lower())
    if not m or m[1] == "0" * 32 or m[2] == "0" * 16:
        return ""
    return m[0]


def current() -> str:
    """The ``traceparent`` of the active span ("" when none, or without the extra)."""
    if trace is None:
        return ""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent(traceparent: str) -> Any:
    """An OpenTelemetry context whose span is the remote one ``traceparent`` names (None: a root)."""
    m = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
    if m is None:
        return None
    remote = SpanContext(int(m[1], 16), int(m[2], 16), is_remote=True, trace_flags=TraceFlags(int(m[3], 16)))
    return trace.set_span_in_context(NonRecordingSpan(remote))


@contextlib.contextmanager
def sending(queue: str, traceparent: str | None) -> Iterator[str]:
    """Around an enqueue by the API: yields the ``traceparent`` to store with the tasks.

    With tracing on, a PRODUCER span ``send <queue>`` (child of the request's
    ``traceparent``) that the tasks point to; otherwise the request's header as it came
    (when valid), or the active span's.
    """
    header = valid(traceparent)
    tracer = _active_tracer()
    if tracer is None:
        yield header or current()
        return
    with tracer.start_as_current_span(f"send {queue}", context=_parent(header) if header else None,
                                      kind=SpanKind.PRODUCER,
                                      attributes={"messaging.system": SYSTEM, "messaging.operation.type": "send",
                                                  "messaging.operation.name": "send",
                                                  "messaging.destination.name": queue}):
        yield current()


async def attempt(task: Claimed, run: Awaitable[Outcome]) -> Outcome:
    """Await ``run`` (one attempt of ``task``) in its CONSUMER span, when tracing is on."""
    tracer = _active_tracer()
    if tracer is None:
        return await run
    attributes = {"messaging.system": SYSTEM, "messaging.operation.type": "process",
                  "messaging.operation.name": "process", "messaging.destination.name": task.queue,
                  "messaging.message.id": task.id, "reliq.task.type": task.type, "reliq.task.attempt": task.attempts}
    with tracer.start_as_current_span(f"process {task.queue}", context=_parent(task.trace), kind=SpanKind.CONSUMER,
                                      attributes=attributes, record_exception=False) as span:
        outcome = await run
        span.set_attribute("reliq.task.outcome", outcome.outcome)
        if outcome.outcome != OK:
            span.set_status(Status(StatusCode.ERROR, outcome.text[:500]))
    return outcome


def configure(role: str) -> None:
    """Set up the SDK from the ``OTEL_*`` environment, for a role of the CLI.

    Only with the SDK installed, no tracer provider set by the application, and an
    exporter asked for (``OTEL_TRACES_EXPORTER`` other than ``none``, or an OTLP
    endpoint): reliq never starts exporting on its own. The sampler (``OTEL_TRACES_SAMPLER``),
    the batch processor (``OTEL_BSP_*``) and the resource (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``) read their variables themselves; the service name
    defaults to ``reliq-<role>``.
    """
    if trace is None or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    names = _exporter_names()
    if not names:
        return
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed: "
                    "pip install 'reliq[otel]'; tracing stays off")
        return
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"reliq-{role}"}))
    provider = TracerProvider(resource=resource)
    for name in names:
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warning("OTEL_TRACES_EXPORTER names %r, which no installed package provides "
                        "(otlp: pip install 'reliq[otel]'); skipped", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(next(iter(found)).load()()))
    trace.set_tracer_provider(provider)


def _exporter_names() -> list[str]:
    value = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not value and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or
                      os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        value = "otlp"
    return [n.strip() for n in value.split(",") if n.strip() and n.strip() != "none"]
