"""Traces: each request's span continues the gateway's (W3C ``traceparent`` in
the NATS headers), and a batch's span links to each request's. Uses the
OpenTelemetry API when it is installed (``pip install 'prediction-worker[traces]'``)
and does nothing otherwise; spans are exported by whatever SDK the
application configures (``opentelemetry-instrument``, or a ``TracerProvider``
of its own), as OpenTelemetry intends for libraries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace

    AVAILABLE = True
except ImportError:  # tracing is optional
    AVAILABLE = False

_TRACER_NAME = "prediction_worker"


@contextlib.contextmanager
def request_span(model: str, headers: Mapping[str, str] | None) -> Iterator[Any]:
    """A ``predict`` span continuing the caller's trace; yields the span's
    context (for a batch to link to), or ``None`` without OpenTelemetry."""
    if not AVAILABLE:
        yield None
        return
    parent = propagate.extract(dict(headers or {}))
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        "predict", context=parent, kind=trace.SpanKind.SERVER, attributes={"model": model}
    ) as span:
        yield span.get_span_context()


@contextlib.contextmanager
def batch_span(model: str, callers: list[Any]) -> Iterator[None]:
    """One ``batch`` span linked to the span of every request in the batch."""
    if not AVAILABLE:
        yield
        return
    links = [trace.Link(context) for context in callers if context is not None]
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        "batch", links=links, attributes={"model": model, "size": len(callers)}
    ):
        yield
