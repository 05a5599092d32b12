"""The distributor's part of a run's trace (taskmill/tracing.py): a run made under a trace is published in a span
of its own, a child of the request that made it, and its message carries that span's context for the processor's
execution to continue. Runs made without one (a schedule's) are published as they are."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

from taskmill import tracing
from taskmill.messages import with_traceparent
from taskmill.store.runs import Outbound
from taskmill.tracing import Span, SpanKind


@contextlib.contextmanager
def traced(runs: list[Outbound]) -> Iterator[list[Outbound]]:
    """For the block that publishes them: the runs with the context their execution continues in their bodies, in
    publish spans that end with the block. With traces off here, a run passes on the context it was made under."""
    if not any(run.traceparent for run in runs):
        yield runs
        return
    out, spans = _begin(runs)
    try:
        yield out
    finally:
        for span in spans:
            span.end()


def _begin(runs: Sequence[Outbound]) -> tuple[list[Outbound], list[Span]]:
    out: list[Outbound] = []
    spans: list[Span] = []
    for run in runs:
        parent = tracing.context_of(run.traceparent)
        if parent is None:
            out.append(run)
            continue
        context = run.traceparent
        if tracing.enabled():
            span = tracing.tracer().start_span(
                f"publish {run.type}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={"taskmill.run_id": run.run_id, "taskmill.task_type": run.type},
            )
            spans.append(span)
            context = tracing.traceparent(span)
        assert context is not None
        out.append(dataclasses.replace(run, body=with_traceparent(run.body, context), traceparent=context))
    return out, spans
