"""OpenTelemetry traces (SPEC O2): on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, off and
free otherwise. Each role is the service `taskmill-<role>`.

One trace follows a run from the API request that created or invoked it to its execution: the API stores the
request's context with the run (`task_schedule.traceparent`); the distributor's publish span is its child, and the
message carries the publish span's context (the key `traceparent` of each run in the body, for every transport and
for coalesced messages; the AMQP header `traceparent` too when the message holds one run); the processor's span of
the execution is a child of that, and an http task's call a child of the execution, with the context sent on in the
request's `traceparent` header. Contexts travel as W3C trace context strings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger(__name__)

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_enabled = False

__all__ = ["Span", "SpanKind", "configure", "context_of", "enabled", "shutdown", "span", "traceparent", "tracer"]


def configure(role: str) -> bool:
    """Exports this process's spans over OTLP/HTTP as `taskmill-<role>` when an endpoint is set; True if so. The
    exporter reads the standard OTEL_* variables (endpoint, headers, timeout, batch delays)."""
    global _enabled
    if not any(os.environ.get(name) for name in _ENDPOINTS):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"taskmill-{role}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("exporting traces as taskmill-%s", role, extra={"action": "tracing"})
    return True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    """Exports what is still buffered (at exit)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if _enabled and flush is not None:
        flush()


def tracer() -> Tracer:
    return trace.get_tracer("taskmill")


def traceparent(span: Span | None = None) -> str | None:
    """The W3C trace context of `span` (the current one when None), or None when nothing is being traced."""
    if not _enabled:
        return None
    span = span or trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_of(value: str | None) -> otel_context.Context | None:
    """The context a `traceparent` string names, to start a child span in; None for none or a malformed one."""
    if not value:
        return None
    found = extract({"traceparent": value})
    return found if trace.get_current_span(found).get_span_context().is_valid else None


@contextlib.contextmanager
def span(
    name: str, kind: SpanKind, attributes: Mapping[str, str | int | float], parent: str | None = None
) -> Iterator[Span | None]:
    """A span made current for the block, a child of `parent` (a traceparent; the current span when None); None and
    nothing done while traces are off. An exception leaving the block marks the span failed."""
    if not _enabled:
        yield None
        return
    with tracer().start_as_current_span(name, context=context_of(parent), kind=kind, attributes=attributes) as made:
        yield made
