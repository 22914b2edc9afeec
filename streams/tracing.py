"""OpenTelemetry spans for step attempts, with context carried through Kafka.

Every attempt is one span; its parent is the span that produced the input, read
from the envelope's W3C ``traceparent``, so one request is one trace across
every worker it passes through.  Spans are exported over OTLP/HTTP only when an
endpoint is configured (or a test gives its own provider); otherwise an attempt
gets only ids — a non-recording span, so trace ids still land on trace events
and propagate — at a fraction of the cost of building SDK spans.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from weir.core.config import WeirSettings
from weir.schemas.messages import ModelCall

__all__ = [
    "TRACEPARENT_HEADER",
    "Tracing",
    "model_call_attributes",
    "span_ids",
    "trace_headers",
    "traceparent_of",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_RANDOM = random.Random()
# A forked child (a worker started by ``multiprocessing``'s default on Linux) reseeds, as the
# ``random`` module's own generator does: else it would draw its parent's trace and span ids.
os.register_at_fork(after_in_child=_RANDOM.seed)
_LOWER_HEX = re.compile("[0-9a-f]{32}")
_NO_TRACE = "0" * 32

TRACEPARENT_HEADER = "traceparent"
"""The Kafka header carrying W3C trace context, as OpenTelemetry's Kafka instrumentations use it."""


def _hex(value: int, size: int) -> str:
    """``value`` as ``2 * size`` lower-case hex digits (``f"{value:0{2 * size}x}"``).

    Compiled, a format spec becomes a ``str.format`` call, several times slower: ids
    are formatted for every attempt.
    """
    return value.to_bytes(size, "big").hex()


class Tracing:
    """Spans of one worker; ``provider`` overrides the one built from settings (tests)."""

    def __init__(
        self,
        settings: WeirSettings,
        *,
        provider: TracerProvider | None = None,
        processors: list[SpanProcessor] | None = None,
    ) -> None:
        self.enabled = settings.otel_enabled or provider is not None
        self._own = provider is None
        # Nothing would be exported: ids for trace events and propagation are all that is
        # needed, and making them costs a fraction of building SDK spans (BENCHMARKS.md).
        self._ids_only = (
            provider is None
            and not processors
            and self.enabled
            and not settings.otel_exporter_otlp_endpoint
        )
        if provider is None and self.enabled and not self._ids_only:
            provider = TracerProvider(
                resource=Resource.create(
                    {"service.name": settings.otel_service_name, "weir.worker": settings.worker_id}
                )
            )
            if settings.otel_exporter_otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                endpoint = settings.otel_exporter_otlp_endpoint.get_secret_value().rstrip("/")
                if not endpoint.endswith("/v1/traces"):
                    endpoint += "/v1/traces"
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint)))
        for processor in processors or ():
            assert provider is not None
            provider.add_span_processor(processor)
        self._provider = provider
        self._tracer = provider.get_tracer("weir") if provider is not None else None

    @property
    def recording(self) -> bool:
        """Spans are built and exported (attributes are worth computing)."""
        return self._tracer is not None and not self._ids_only

    def ids(self, parent: str | None) -> tuple[str | None, str | None, str | None]:
        """``(trace_id, span_id, traceparent)`` of an attempt whose span is not recorded.

        The ids a non-recording span would carry (``span``), without building one; with
        OpenTelemetry off, those of ``parent``.
        """
        if not self._ids_only:
            return (*span_ids(None, parent), parent)
        sid = _hex(_RANDOM.getrandbits(64) or 1, 8)
        if (
            parent
            and len(parent) == 55
            and parent[2] == parent[35] == "-"
            and _LOWER_HEX.fullmatch(parent, 3, 35)
        ):
            # A well-formed parent (what this worker writes): its trace id as it is.
            tid = parent[3:35]
            if tid != _NO_TRACE:
                return tid, sid, f"00-{tid}-{sid}-01"
        trace_id = 0
        if parent:
            parts = parent.split("-")
            if len(parts) == 4:
                with contextlib.suppress(ValueError):
                    trace_id = int(parts[1], 16)
        if not 0 < trace_id < 1 << 128:  # none, or not a trace id: a new trace
            trace_id = _RANDOM.getrandbits(128) or 1
        tid = _hex(trace_id, 16)
        return tid, sid, f"00-{tid}-{sid}-01"

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        parent: str | None,
        attributes: Mapping[str, Any],
        kind: SpanKind = SpanKind.CONSUMER,
    ) -> Iterator[Span | None]:
        """A span under the ``parent`` traceparent (else the current span), current in the block.

        Without an exporter the span only carries ids (a non-recording span).
        """
        if self._ids_only:
            yield _ids_only_span(parent)
            return
        if self._tracer is None:
            yield None
            return
        context = _PROPAGATOR.extract({"traceparent": parent}) if parent else None
        with self._tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=dict(attributes),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def model_call(self, call: ModelCall) -> None:
        """Record a finished model call as a child of the current span (the step attempt's).

        The span carries OpenTelemetry's GenAI attributes (``gen_ai.*``) and
        spans the call's own start and duration.
        """
        if self._tracer is None:
            return
        start_ns = call.started_at * 1_000_000
        span = self._tracer.start_span(
            f"{call.operation} {call.model}",
            kind=SpanKind.CLIENT,
            start_time=start_ns,
            attributes=model_call_attributes(call),
        )
        if call.status == "FAILURE":
            mark_failed(span, call.error_type or "model_error", f"{call.endpoint} failed")
        span.end(end_time=start_ns + int(call.duration_ms * 1_000_000))

    def shutdown(self) -> None:
        if self._own and self._provider is not None:
            self._provider.shutdown()


def _ids_only_span(parent: str | None) -> Span:
    """A non-recording span with a new span id, in the parent's trace (or a new one)."""
    trace_id = 0
    if parent:
        parts = parent.split("-")
        if len(parts) == 4:
            with contextlib.suppress(ValueError):
                trace_id = int(parts[1], 16)
    if not trace_id:
        trace_id = _RANDOM.getrandbits(128) or 1
    context = SpanContext(
        trace_id, _RANDOM.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(1)
    )
    return NonRecordingSpan(context)


def model_call_attributes(call: ModelCall) -> dict[str, Any]:
    """GenAI semantic-convention attributes of a model call, plus weir's own."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": call.operation,
        "gen_ai.provider.name": call.provider,
        "gen_ai.request.model": call.model,
        "gen_ai.response.model": call.model,
        "gen_ai.usage.input_tokens": call.input_tokens,
        "gen_ai.usage.output_tokens": call.output_tokens,
        # No standard attribute for cost yet; gen_ai.usage.cost is the common convention.
        "gen_ai.usage.cost": float(call.cost_usd),
        "weir.model.endpoint": call.endpoint,
        "weir.model.usage_source": call.usage_source,
        "weir.step": call.step,
        "weir.attempt": call.attempt,
        "weir.model.streamed": call.streamed,
    }
    optional = {
        "error.type": call.error_type,
        "weir.model.ttft_ms": call.ttft_ms,
        "weir.routing.rule": call.rule,
        "weir.routing.rules_version": call.rules_version,
        "weir.model.fallback_from": call.fallback_from,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def trace_headers(traceparent: str | None) -> list[tuple[str, bytes]] | None:
    """Kafka headers carrying ``traceparent`` (``None`` without one)."""
    return [(TRACEPARENT_HEADER, traceparent.encode())] if traceparent else None


def traceparent_of(span: Span | None, fallback: str | None) -> str | None:
    """The W3C traceparent for messages caused by ``span`` (``fallback`` without one).

    Formatted here rather than through the propagator: same text, on the hot path.
    """
    if span is None:
        return fallback
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return fallback
    return f"00-{_hex(ctx.trace_id, 16)}-{_hex(ctx.span_id, 8)}-{_hex(ctx.trace_flags, 1)}"


def span_ids(span: Span | None, traceparent: str | None) -> tuple[str | None, str | None]:
    """``(trace_id, span_id)`` as hex, from the span or else the incoming traceparent."""
    if span is not None and (ctx := span.get_span_context()).is_valid:
        return _hex(ctx.trace_id, 16), _hex(ctx.span_id, 8)
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4:
            return parts[1], parts[2]
    return None, None


def mark_failed(span: Span | None, error_type: str, message: str) -> None:
    """Record a failed attempt on its span (OTel's ``error.type`` convention)."""
    if span is None:
        return
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message[:500]))
