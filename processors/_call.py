"""One try of one model endpoint: admit → span → probe → record, the same for every call.

Plain calls (``chat``, ``embed``, ``classify``) and streamed ones (``ChatStream``)
both go through ``one_try``: it resolves the key, waits for room under the
endpoint's limits, opens the OTel GenAI client span, asks the circuit breaker's
probe, and records the ``ModelCall`` on the step attempt exactly once, whether
the try succeeded or failed.  The caller's body only talks to the provider and
fills in what came back (``CallTry.usage``, ``model``, ``ttft_ms``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from weir.core.errors import CircuitOpenError, ModelError
from weir.processors.circuit_breaker import CircuitBreaker, Probe
from weir.processors.limits import LatencyStats
from weir.processors.providers._base import Provider, ProviderCall
from weir.processors.results import Usage
from weir.processors.tokens import estimate_tokens
from weir.schemas.messages import ModelCall, now_ms
from weir.streams.context import AttemptScope, current_scope

__all__ = ["CallMeta", "CallTry", "Callee", "Operation", "breaker_refused", "one_try", "usage_of"]

Operation = Literal["chat", "embeddings", "classification"]
CostHook = Callable[[Decimal], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallMeta:
    """What the router knows about a call: the rule and rule-set version that chose it."""

    rule: str | None = None
    rules_version: int | None = None
    on_cost: CostHook | None = None
    """Awaited with each try's cost (budgets count spend as it happens)."""


NO_META = CallMeta()


class Callee(Protocol):
    """What a try needs of an endpoint (``ModelEndpoint`` is one)."""

    name: str
    model: str
    provider: Provider
    breaker: CircuitBreaker | None
    timeout_s: float
    stream_retries: int
    latency: LatencyStats

    def chain(self) -> Sequence[Callee]: ...

    def cost(self, usage: Usage) -> Decimal: ...

    async def provider_call(self) -> ProviderCall: ...

    def key_refused(self, error: ModelError) -> None: ...

    def admitted(self, tokens: int) -> AbstractAsyncContextManager[None]: ...

    def debit_tokens(self, tokens: int) -> None: ...


@dataclass
class CallTry:
    """One try in progress: the provider call to make, and what it used (for its record)."""

    call: ProviderCall
    started: float
    """``time.perf_counter()`` when the try began (before its admission)."""
    usage: Usage = field(default_factory=lambda: Usage(0, 0, "provider"))
    """What the try used; a failed try keeps what it had used (a broken stream is billed)."""
    model: str | None = None
    """The model the provider says answered."""
    ttft_ms: float | None = None
    cost: Decimal = Decimal(0)
    """Set when the try ends."""


@contextlib.asynccontextmanager
async def one_try(
    ep: Callee,
    operation: Operation,
    meta: CallMeta,
    fallback_from: str | None,
    estimate: int,
    *,
    streamed: bool = False,
) -> AsyncIterator[CallTry]:
    """Admit, span, probe and record one try of ``ep``; the body calls the provider.

    A ``ModelError`` from the body (or from the admission) is recorded as a
    failure and raised again; the endpoint's breaker hears of it only when the
    call was admitted (weir's own limits refusing it say nothing of the endpoint).
    """
    scope = current_scope()
    started_at, t0 = now_ms(), time.perf_counter()
    with (
        _span(ep, scope, operation, meta, fallback_from, streamed) as span,
        Probe(ep.breaker) as probe,
    ):
        admitted = False
        attempt: CallTry | None = None
        try:
            call = await ep.provider_call()
            async with ep.admitted(estimate):
                admitted = True
                attempt = CallTry(call, t0)
                yield attempt
        except ModelError as exc:
            if admitted:
                probe.failure(exc)
            ep.key_refused(exc)
            failed = attempt or CallTry(ProviderCall(endpoint=ep.name, model=ep.model), t0)
            failed.cost = ep.cost(failed.usage)
            _record(
                ep,
                scope,
                span,
                operation,
                "FAILURE",
                started_at,
                t0,
                failed,
                meta,
                fallback_from,
                error_type=exc.error_type,
                streamed=streamed,
            )
            if meta.on_cost is not None and failed.cost:
                await meta.on_cost(failed.cost)
            raise
        probe.success()
        ep.debit_tokens(max(0, attempt.usage.input_tokens - estimate) + attempt.usage.output_tokens)
        attempt.cost = ep.cost(attempt.usage)
        ep.latency.observe((time.perf_counter() - t0) * 1000)
        _record(
            ep,
            scope,
            span,
            operation,
            "SUCCESS",
            started_at,
            t0,
            attempt,
            meta,
            fallback_from,
            streamed=streamed,
        )
    if meta.on_cost is not None and attempt.cost:
        await meta.on_cost(attempt.cost)


def breaker_refused(
    ep: Callee, operation: Operation, meta: CallMeta, fallback_from: str | None, *, streamed: bool
) -> CircuitOpenError | None:
    """``None`` if ``ep``'s breaker lets a call through; else the error, recorded on the trace
    (which shows why a fallback answered)."""
    if ep.breaker is None or ep.breaker.allow():
        return None
    refused = CallTry(ProviderCall(endpoint=ep.name, model=ep.model), time.perf_counter())
    _record(
        ep,
        current_scope(),
        None,
        operation,
        "FAILURE",
        now_ms(),
        time.perf_counter(),
        refused,
        meta,
        fallback_from,
        error_type=CircuitOpenError.error_type,
        streamed=streamed,
    )
    return CircuitOpenError(f"endpoint {ep.name!r}: circuit open after repeated failures")


def usage_of(
    input_tokens: int | None, output_tokens: int | None, estimate_in: int, text: str
) -> Usage:
    """The provider's counts when it gave both, else estimates for what it left out."""
    if input_tokens is not None and output_tokens is not None:
        return Usage(input_tokens, output_tokens, "provider")
    return Usage(
        input_tokens if input_tokens is not None else estimate_in,
        output_tokens if output_tokens is not None else estimate_tokens(text),
        "estimate",
    )


@contextlib.contextmanager
def _span(
    ep: Callee,
    scope: AttemptScope | None,
    operation: Operation,
    meta: CallMeta,
    fallback_from: str | None,
    streamed: bool,
) -> Iterator[Span | None]:
    if scope is None or scope.tracing is None:
        yield None
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": ep.provider.name,
        "gen_ai.request.model": ep.model,
        "weir.endpoint": ep.name,
        "weir.streamed": streamed,
    }
    if ep.breaker is not None:
        attributes["weir.circuit.state"] = ep.breaker.state
    if meta.rule is not None:
        attributes["weir.routing.rule"] = meta.rule
    if meta.rules_version is not None:
        attributes["weir.routing.rules_version"] = meta.rules_version
    if fallback_from is not None:
        attributes["weir.fallback_from"] = fallback_from
    base_url = getattr(ep.provider, "base_url", None)
    if isinstance(base_url, str):
        # Without any user:password@ of the URL: span attributes are exported.
        host = base_url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
        address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        attributes["server.address"] = address or host
        if port.isdigit():
            attributes["server.port"] = int(port)
    with scope.tracing.span(
        f"{operation} {ep.model}", parent=None, attributes=attributes, kind=SpanKind.CLIENT
    ) as span:
        yield span


def _record(
    ep: Callee,
    scope: AttemptScope | None,
    span: Span | None,
    operation: Operation,
    status: Literal["SUCCESS", "FAILURE"],
    started_at: int,
    t0: float,
    attempt: CallTry,
    meta: CallMeta,
    fallback_from: str | None,
    *,
    error_type: str | None = None,
    streamed: bool = False,
) -> None:
    duration = (time.perf_counter() - t0) * 1000
    usage, ttft_ms = attempt.usage, attempt.ttft_ms
    if span is not None:
        span.set_attribute("gen_ai.response.model", attempt.model or ep.model)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.usage.cost", float(attempt.cost))
        span.set_attribute("weir.usage_source", usage.source)
        if ttft_ms is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", ttft_ms / 1000)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
    if scope is None:
        return
    call = ModelCall(
        step=scope.context.step,
        attempt=scope.context.attempt,
        endpoint=ep.name,
        provider=ep.provider.name,
        model=attempt.model or ep.model,
        operation=operation,
        status=status,
        started_at=started_at,
        duration_ms=round(duration, 3),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        usage_source=usage.source,
        cost_usd=attempt.cost,
        error_type=error_type,
        ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
        streamed=streamed,
        rule=meta.rule,
        rules_version=meta.rules_version,
        fallback_from=fallback_from,
    )
    scope.record(call, traced=span is not None)
