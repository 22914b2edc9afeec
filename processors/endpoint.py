"""``ModelEndpoint``: a named model behind a provider, with price, limits, breaker and fallbacks.

A step calls an endpoint (or a ``Router`` that picks one):

    >>> llm = ModelEndpoint(                                      # doctest: +SKIP
    ...     "gpt-4o-mini",
    ...     provider=OpenAICompatible(api_key="env:OPENAI_API_KEY"),
    ...     limits=Limits(requests_per_minute=3000, max_concurrency=64),
    ...     fallbacks=[local_llm],
    ... )
    >>> result = await llm.chat([{"role": "user", "content": "hi"}])  # doctest: +SKIP
    >>> result.text, result.usage, result.cost_usd                     # doctest: +SKIP

Around every call the endpoint: resolves its key (a secret reference, at call
time), waits for room under its limits, asks its circuit breaker, calls the
provider within its timeout, counts usage (the provider's, else an estimate),
prices it exactly, and, inside a worker, records a ``ModelCall`` on the step
attempt and opens an OTel GenAI client span.  When the call fails, or the
breaker is open, the next endpoint of ``fallbacks`` takes it within the same
attempt; what still fails raises a ``ModelError`` whose ``retriable`` flag the
step's ``RetryPolicy`` honours.  Streamed calls publish their tokens to the
pipeline's stream topic as they arrive, and a stream that breaks mid-answer is
tried again (``stream_retries``) or falls back, with a restart marker, never
returned as a truncated success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import SecretStr, TypeAdapter

from weir.core.config import WeirSettings
from weir.core.errors import (
    CircuitOpenError,
    ConfigError,
    ModelError,
    ModelTimeoutError,
    RateLimitedError,
    SecretError,
    StreamInterruptedError,
)
from weir.core.secrets import SecretRef
from weir.processors._env import resolver_for, settings_now
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker, Probe
from weir.processors.cost import FREE, Price, price_of
from weir.processors.limits import LatencyStats, Limits, TokenBucket
from weir.processors.providers._base import Message, Provider, ProviderCall
from weir.processors.results import ChatResult, Classification, Embeddings, StreamEvent, Usage
from weir.processors.streaming import StreamPublisher
from weir.processors.tokens import estimate_messages, estimate_tokens
from weir.schemas.messages import ModelCall, now_ms
from weir.streams.context import AttemptScope, current_scope
from weir.streams.dead_letter import error_type_of
from weir.streams.journal import journaled, journaled_call

__all__ = ["ChatStream", "ModelEndpoint", "endpoint_states"]

log = logging.getLogger("weir.models")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
_ENDPOINTS: weakref.WeakValueDictionary[str, ModelEndpoint] = weakref.WeakValueDictionary()

Operation = Literal["chat", "embeddings", "classification"]
CostHook = Callable[[Decimal], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallMeta:
    """What the router knows about a call: the rule and rule-set version that chose it."""

    rule: str | None = None
    rules_version: int | None = None
    on_cost: CostHook | None = None
    """Awaited with each try's cost (budgets count spend as it happens)."""


_NO_META = CallMeta()
DEFAULT_BREAKER = BreakerPolicy()


class ModelEndpoint:
    """A named model behind a provider.

    ``price`` (or ``input_cost_per_token``/``output_cost_per_token``, or
    ``cost_per_token`` for both) overrides the price table; ``api_key`` (a
    secret reference) overrides the provider's.  ``timeout_s`` bounds a whole
    call, and for streamed calls the wait for the first token and between
    tokens; it starts once the call is admitted under ``limits`` (a call waits
    up to ``queue_timeout_s`` for that, then fails ``rate_limited``).
    ``breaker=None`` turns the circuit breaker off.
    """

    def __init__(
        self,
        name: str,
        *,
        provider: Provider,
        model: str | None = None,
        api_key: str | None = None,
        price: Price | None = None,
        cost_per_token: Decimal | str | float | None = None,
        input_cost_per_token: Decimal | str | float | None = None,
        output_cost_per_token: Decimal | str | float | None = None,
        limits: Limits | None = None,
        timeout_s: float = 60.0,
        breaker: BreakerPolicy | None = DEFAULT_BREAKER,
        fallbacks: Sequence[ModelEndpoint] = (),
        stream_retries: int = 1,
        queue_timeout_s: float = 60.0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"endpoint name {name!r} must be 1-128 characters: letters, digits and ._:/@-"
            )
        where = f"endpoint {name!r}"
        if not isinstance(provider, Provider):
            raise ConfigError(f"{where}: provider must be a Provider, got {provider!r}")
        if timeout_s <= 0:
            raise ConfigError(f"{where}: timeout_s must be > 0")
        if stream_retries < 0:
            raise ConfigError(f"{where}: stream_retries must be >= 0")
        self.name = name
        self.provider = provider
        self.model = model or name
        key = api_key if api_key is not None else provider.api_key
        try:
            self._key_ref = SecretRef.parse(key) if key is not None else None
        except SecretError as exc:
            raise SecretError(f"{where}: api_key: {exc}") from None
        per_token = [input_cost_per_token, output_cost_per_token]
        if cost_per_token is not None:
            per_token = [v if v is not None else cost_per_token for v in per_token]
        if price is not None and any(v is not None for v in per_token):
            raise ConfigError(f"{where}: give price= or the *_cost_per_token options, not both")
        if any(v is not None for v in per_token):
            price = Price.per_token(input=per_token[0] or 0, output=per_token[1] or 0)
        if price is None and provider.name == "local":
            price = FREE
        self._own_price = price
        self.limits = limits or Limits()
        self.timeout_s = float(timeout_s)
        if queue_timeout_s <= 0:
            raise ConfigError(f"{where}: queue_timeout_s must be > 0")
        self.queue_timeout_s = float(queue_timeout_s)
        self.breaker = CircuitBreaker(name, breaker) if breaker is not None else None
        for fb in fallbacks:
            if not isinstance(fb, ModelEndpoint):
                raise ConfigError(f"{where}: fallbacks must be ModelEndpoints, got {fb!r}")
            if fb is self:
                raise ConfigError(f"{where} cannot be its own fallback")
        self.fallbacks = tuple(fallbacks)
        self.stream_retries = stream_retries
        self.params = dict(params or {})
        self.latency = LatencyStats()
        self._requests = (
            TokenBucket(self.limits.requests_per_minute)
            if self.limits.requests_per_minute
            else None
        )
        self._tokens = (
            TokenBucket(self.limits.tokens_per_minute) if self.limits.tokens_per_minute else None
        )
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.in_flight = 0
        _ENDPOINTS[name] = self

    def __repr__(self) -> str:
        return f"ModelEndpoint({self.name!r}, model={self.model!r}, {self.provider.describe()})"

    # -- prices -------------------------------------------------------------------------

    def price(self, settings: WeirSettings | None = None) -> Price | None:
        """The price in force: own, configured, or the default table's; ``None`` if unknown.

        ``settings``: whose price table (default: the step's, else the environment's).
        """
        return price_of(self.model, settings or settings_now(), self._own_price)

    def cost(self, usage: Usage) -> Decimal:
        price = self.price()
        return price.cost(usage.input_tokens, usage.output_tokens) if price else Decimal(0)

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Upper-bound cost of a call this size (budgets reserve it before the call)."""
        price = self.price()
        return price.cost(input_tokens, output_tokens) if price else Decimal(0)

    # -- public calls -------------------------------------------------------------------

    @journaled_call(ChatResult)
    async def chat(
        self, messages: Sequence[Message], *, meta: CallMeta = _NO_META, **params: Any
    ) -> ChatResult:
        """One chat completion (falls back along ``fallbacks``)."""
        _check_messages(self.name, messages)
        merged = {**self.params, **params}
        estimate = estimate_messages(messages)

        async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
            done = await ep.provider.chat(call, messages, merged)
            usage = _usage(done.input_tokens, done.output_tokens, estimate, done.text)
            return done, usage, done.model

        done, usage, cost, ep = await self._with_fallbacks("chat", once, estimate, meta)
        return ChatResult(
            endpoint=ep.name,
            model=done.model,
            usage=usage,
            cost_usd=cost,
            rule=meta.rule,
            rules_version=meta.rules_version,
            text=done.text,
            finish_reason=done.finish_reason,
            raw=done.raw,
        )

    @journaled_call(Embeddings)
    async def embed(
        self, texts: Sequence[str], *, meta: CallMeta = _NO_META, **params: Any
    ) -> Embeddings:
        """Embed ``texts`` in one call; vectors come back in input order."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"endpoint {self.name!r}: embed() takes a list of strings")
        merged = {**self.params, **params}
        estimate = sum(estimate_tokens(t) for t in texts)

        async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
            done = await ep.provider.embed(call, texts, merged)
            if done.input_tokens is not None:
                usage = Usage(done.input_tokens, 0, "provider")
            else:
                usage = Usage(estimate, 0, "estimate")
            return done, usage, done.model

        done, usage, cost, ep = await self._with_fallbacks("embeddings", once, estimate, meta)
        return Embeddings(
            endpoint=ep.name,
            model=done.model,
            usage=usage,
            cost_usd=cost,
            rule=meta.rule,
            rules_version=meta.rules_version,
            vectors=done.vectors,
        )

    @journaled_call(Classification)
    async def classify(
        self, text: str, *, meta: CallMeta = _NO_META, **params: Any
    ) -> Classification:
        """A label for ``text`` (local classifiers)."""
        merged = {**self.params, **params}
        estimate = estimate_tokens(text)

        async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
            done = await ep.provider.classify(call, text, merged)
            return done, Usage(estimate, 0, "estimate"), done.model

        done, usage, cost, ep = await self._with_fallbacks("classification", once, estimate, meta)
        return Classification(
            endpoint=ep.name,
            model=done.model,
            usage=usage,
            cost_usd=cost,
            rule=meta.rule,
            rules_version=meta.rules_version,
            label=done.label,
            score=done.score,
            scores=done.scores,
        )

    def stream_chat(
        self, messages: Sequence[Message], *, meta: CallMeta = _NO_META, **params: Any
    ) -> ChatStream:
        """A streamed chat answer: iterate its ``StreamEvent``s, or ``await .collect()``."""
        _check_messages(self.name, messages)
        return ChatStream(self, list(messages), {**self.params, **params}, meta)

    # -- the call machinery -------------------------------------------------------------

    def _chain(self) -> tuple[ModelEndpoint, ...]:
        return (self, *self.fallbacks)

    async def _with_fallbacks(
        self,
        operation: Operation,
        once: Callable[[ModelEndpoint, ProviderCall], Awaitable[tuple[Any, Usage, str]]],
        estimate: int,
        meta: CallMeta,
    ) -> tuple[Any, Usage, Decimal, ModelEndpoint]:
        last: ModelError | None = None
        for ep in self._chain():
            fallback_from = None if ep is self else self.name
            if ep.breaker is not None and not ep.breaker.allow():
                ep._refused(operation, meta, fallback_from, streamed=False)
                last = CircuitOpenError(
                    f"endpoint {ep.name!r}: circuit open after repeated failures"
                )
                continue
            try:
                done, usage, cost = await ep._call_once(
                    operation, once, estimate, meta, fallback_from
                )
            except ModelError as exc:
                last = exc
                if not exc.retriable:
                    raise
                continue
            return done, usage, cost, ep
        assert last is not None
        raise last

    async def _call_once(
        self,
        operation: Operation,
        once: Callable[[ModelEndpoint, ProviderCall], Awaitable[tuple[Any, Usage, str]]],
        estimate: int,
        meta: CallMeta,
        fallback_from: str | None,
    ) -> tuple[Any, Usage, Decimal]:
        scope = current_scope()
        started_at, t0 = now_ms(), time.perf_counter()
        with (
            self._span(scope, operation, meta, fallback_from) as span,
            Probe(self.breaker) as probe,
        ):
            admitted = False
            try:
                call = await self._provider_call()
                async with self._admitted(estimate):
                    admitted = True
                    try:
                        async with asyncio.timeout(self.timeout_s):
                            done, usage, model = await once(self, call)
                    except TimeoutError:
                        raise ModelTimeoutError(
                            f"endpoint {self.name!r} did not answer within {self.timeout_s:g}s"
                        ) from None
            except ModelError as exc:
                if admitted:  # weir's own limits refusing the call say nothing of the endpoint
                    probe.failure(exc)
                self._key_refused(exc)
                self._record(
                    scope,
                    span,
                    operation,
                    "FAILURE",
                    started_at,
                    t0,
                    Usage(0, 0, "provider"),
                    Decimal(0),
                    meta,
                    fallback_from,
                    error_type=exc.error_type,
                )
                raise
            probe.success()
            if self._tokens is not None:
                self._tokens.debit(max(0, usage.input_tokens - estimate) + usage.output_tokens)
            cost = self.cost(usage)
            self.latency.observe((time.perf_counter() - t0) * 1000)
            self._record(
                scope,
                span,
                operation,
                "SUCCESS",
                started_at,
                t0,
                usage,
                cost,
                meta,
                fallback_from,
                response_model=model,
            )
        if meta.on_cost is not None and cost:
            await meta.on_cost(cost)
        return done, usage, cost

    async def _provider_call(self) -> ProviderCall:
        key: SecretStr | None = None
        if self._key_ref is not None:
            key = await resolver_for(settings_now()).resolve(self._key_ref)
        return ProviderCall(endpoint=self.name, model=self.model, api_key=key)

    def _key_refused(self, error: ModelError) -> None:
        """After a 401/403 the key may have been rotated: resolve it afresh next time."""
        if error.status in (401, 403) and self._key_ref is not None:
            resolver_for(settings_now()).invalidate(self._key_ref)

    @contextlib.asynccontextmanager
    async def _admitted(self, tokens: int) -> AsyncIterator[None]:
        """Wait for room under the limits: back-pressure, up to ``queue_timeout_s``.

        The call's own ``timeout_s`` starts once it is admitted, so a busy
        endpoint makes calls wait, not fail.
        """
        deadline = time.monotonic() + self.queue_timeout_s
        what = f"endpoint {self.name!r}"
        if self._requests is not None:
            await self._requests.take(1, deadline=deadline, what=what)
        if self._tokens is not None:
            await self._tokens.take(tokens, deadline=deadline, what=what)
        slots = self._semaphore()
        if slots is not None:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await slots.acquire()
            except TimeoutError:
                raise RateLimitedError(
                    f"{what}: all {self._concurrency} call slots stayed busy for"
                    f" {self.queue_timeout_s:g}s"
                ) from None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if slots is not None:
                slots.release()

    @property
    def _concurrency(self) -> int | None:
        """Calls in flight at once: the limit, and never more than the provider's pool."""
        bounds = [b for b in (self.limits.max_concurrency, self.provider.max_concurrency) if b]
        return min(bounds) if bounds else None

    def _semaphore(self) -> asyncio.Semaphore | None:
        size = self._concurrency
        if size is None:
            return None
        loop = asyncio.get_running_loop()
        sem = self._slots.get(loop)
        if sem is None:
            sem = self._slots[loop] = asyncio.Semaphore(size)
        return sem

    def _refused(
        self, operation: Operation, meta: CallMeta, fallback_from: str | None, *, streamed: bool
    ) -> None:
        """Record a call the open breaker refused (the trace shows why a fallback answered)."""
        scope = current_scope()
        self._record(
            scope,
            None,
            operation,
            "FAILURE",
            now_ms(),
            time.perf_counter(),
            Usage(0, 0, "provider"),
            Decimal(0),
            meta,
            fallback_from,
            error_type=CircuitOpenError.error_type,
            streamed=streamed,
        )

    @contextlib.contextmanager
    def _span(
        self,
        scope: AttemptScope | None,
        operation: Operation,
        meta: CallMeta,
        fallback_from: str | None,
        streamed: bool = False,
    ) -> Iterator[Span | None]:
        if scope is None or scope.tracing is None:
            yield None
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": self.provider.name,
            "gen_ai.request.model": self.model,
            "weir.endpoint": self.name,
            "weir.streamed": streamed,
        }
        if self.breaker is not None:
            attributes["weir.circuit.state"] = self.breaker.state
        if meta.rule is not None:
            attributes["weir.routing.rule"] = meta.rule
        if meta.rules_version is not None:
            attributes["weir.routing.rules_version"] = meta.rules_version
        if fallback_from is not None:
            attributes["weir.fallback_from"] = fallback_from
        base_url = getattr(self.provider, "base_url", None)
        if isinstance(base_url, str):
            # Without any user:password@ of the URL: span attributes are exported.
            host = base_url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
            address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
            attributes["server.address"] = address or host
            if port.isdigit():
                attributes["server.port"] = int(port)
        with scope.tracing.span(
            f"{operation} {self.model}", parent=None, attributes=attributes, kind=SpanKind.CLIENT
        ) as span:
            yield span

    def _record(
        self,
        scope: AttemptScope | None,
        span: Span | None,
        operation: Operation,
        status: Literal["SUCCESS", "FAILURE"],
        started_at: int,
        t0: float,
        usage: Usage,
        cost: Decimal,
        meta: CallMeta,
        fallback_from: str | None,
        *,
        error_type: str | None = None,
        response_model: str | None = None,
        ttft_ms: float | None = None,
        streamed: bool = False,
    ) -> ModelCall | None:
        duration = (time.perf_counter() - t0) * 1000
        if span is not None:
            span.set_attribute("gen_ai.response.model", response_model or self.model)
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("gen_ai.usage.cost", float(cost))
            span.set_attribute("weir.usage_source", usage.source)
            if ttft_ms is not None:
                span.set_attribute("gen_ai.response.time_to_first_chunk", ttft_ms / 1000)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
        if scope is None:
            return None
        call = ModelCall(
            step=scope.context.step,
            attempt=scope.context.attempt,
            endpoint=self.name,
            provider=self.provider.name,
            model=response_model or self.model,
            operation=operation,
            status=status,
            started_at=started_at,
            duration_ms=round(duration, 3),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            usage_source=usage.source,
            cost_usd=cost,
            error_type=error_type,
            ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
            streamed=streamed,
            rule=meta.rule,
            rules_version=meta.rules_version,
            fallback_from=fallback_from,
        )
        scope.record(call, traced=span is not None)
        return call

    def state(self, settings: WeirSettings | None = None) -> dict[str, Any]:
        """Breaker, latency and load of this endpoint in this process (for ``/models``)."""
        price = self.price(settings)
        return {
            "model": self.model,
            "provider": self.provider.describe(),
            "circuit": self.breaker.snapshot() if self.breaker is not None else None,
            "latency_ms": {
                "p50": self.latency.percentile(50),
                "p95": self.latency.percentile(95),
                "calls": self.latency.count,
            },
            "in_flight": self.in_flight,
            "price_per_1m": None
            if price is None
            else {"input": str(price.input_per_1m), "output": str(price.output_per_1m)},
            "fallbacks": [fb.name for fb in self.fallbacks],
        }


def endpoint_states(settings: WeirSettings | None = None) -> dict[str, dict[str, Any]]:
    """Every endpoint defined in this process, by name (prices from ``settings``' table)."""
    return {name: ep.state(settings) for name, ep in sorted(_ENDPOINTS.items())}


def _check_messages(endpoint: str, messages: Sequence[Message]) -> None:
    if isinstance(messages, str | bytes) or not messages:
        raise ConfigError(
            f"endpoint {endpoint!r}: messages must be a non-empty list of"
            " {'role': ..., 'content': ...} mappings"
        )
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError(f"endpoint {endpoint!r}: every message needs a 'role', got {m!r}")


def _usage(
    input_tokens: int | None, output_tokens: int | None, estimate_in: int, text: str
) -> Usage:
    if input_tokens is not None and output_tokens is not None:
        return Usage(input_tokens, output_tokens, "provider")
    return Usage(
        input_tokens if input_tokens is not None else estimate_in,
        output_tokens if output_tokens is not None else estimate_tokens(text),
        "estimate",
    )


# -- streaming ------------------------------------------------------------------------------


_Resolved = tuple[ModelEndpoint, CallMeta, Callable[[], None] | None]


_CHAT_RESULT = TypeAdapter(ChatResult)
"""Journals streamed answers (``weir.streams.journal``)."""


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ChatStream:
    """A streamed chat answer in progress.

    Iterate it for ``StreamEvent``s (``delta`` text; ``restart`` when the answer
    broke off and starts again), then read ``result``; or ``await collect()``.
    The call runs in its own task from the first iteration on, so the tokens
    reach the stream topic at the model's pace, whatever the step does with them.
    """

    def __init__(
        self,
        endpoint: ModelEndpoint,
        messages: list[Message],
        params: dict[str, Any],
        meta: CallMeta,
    ) -> None:
        async def resolve() -> _Resolved:
            return endpoint, meta, None

        self._setup(resolve, endpoint.name, messages, params)

    def _setup(
        self,
        resolve: Callable[[], Awaitable[_Resolved]],
        name: str,
        messages: list[Message],
        params: dict[str, Any],
    ) -> None:
        self._resolve = resolve
        self._name = name
        self._messages = messages
        self._params = params
        self._queue: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self.result: ChatResult | None = None

    @classmethod
    def routed(
        cls,
        resolve: Callable[[], Awaitable[_Resolved]],
        messages: list[Message],
        params: dict[str, Any],
    ) -> ChatStream:
        """A stream whose endpoint is chosen (by a router) when it starts."""
        stream = cls.__new__(cls)
        stream._setup(resolve, "routed", messages, params)
        return stream

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._drive(), name=f"weir-stream-{self._name}")
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        if isinstance(item, _End):
            self._finished = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def collect(self) -> ChatResult:
        """Run the stream to its end; the complete answer (``ModelError`` if every try failed)."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def aclose(self) -> None:
        """Stop the call early (the tokens already published stay on the topic)."""
        self._finished = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drive(self) -> None:
        scope = current_scope()
        publisher = StreamPublisher(scope) if scope is not None else None
        release: Callable[[], None] | None = None
        try:
            endpoint, meta, release = await self._resolve()

            def replayed(done: ChatResult) -> None:
                # A redelivered attempt: the answer comes from the journal, in one piece.
                self._queue.put_nowait(StreamEvent("delta", done.text, done.endpoint))
                if publisher is not None:
                    publisher.delta(done.text, endpoint=done.endpoint, attempt=1)
                    publisher.done(
                        endpoint=done.endpoint, attempt=1, usage=done.usage, cost_usd=done.cost_usd
                    )

            self.result = await journaled(
                lambda: _stream_tries(
                    endpoint, self._messages, self._params, meta, self._queue, publisher
                ),
                _CHAT_RESULT,
                replayed=replayed,
            )
            if publisher is not None:
                await publisher.close()
            self._queue.put_nowait(_End(None))
        except asyncio.CancelledError:
            if publisher is not None:
                await publisher.abandon()  # clients must not wait for a call that is gone
            raise
        except BaseException as exc:
            if publisher is not None:
                if not publisher.ended:  # e.g. a secret that cannot be resolved
                    publisher.abort(error_type=error_type_of(exc))
                with contextlib.suppress(Exception):
                    await publisher.close()
            self._queue.put_nowait(_End(exc))
        finally:
            if release is not None:
                release()


async def _stream_tries(
    first: ModelEndpoint,
    messages: list[Message],
    params: dict[str, Any],
    meta: CallMeta,
    queue: asyncio.Queue[StreamEvent | _End],
    publisher: StreamPublisher | None,
) -> ChatResult:
    """Try ``first`` (and again on a broken stream), then its fallbacks, until one completes."""
    scope = current_scope()
    estimate = estimate_messages(messages)
    last: ModelError | None = None
    attempt = 0
    emitted = False
    restarts = 0
    for ep in first._chain():
        fallback_from = None if ep is first else first.name
        for _ in range(1 + ep.stream_retries):
            if ep.breaker is not None and not ep.breaker.allow():
                ep._refused("chat", meta, fallback_from, streamed=True)
                last = CircuitOpenError(
                    f"endpoint {ep.name!r}: circuit open after repeated failures"
                )
                break
            attempt += 1
            text: list[str] = []
            got_in: int | None = None
            got_out: int | None = None
            model: str | None = None
            finish: str | None = None
            ttft: float | None = None
            started_at, t0 = now_ms(), time.perf_counter()
            with (
                ep._span(scope, "chat", meta, fallback_from, streamed=True) as span,
                Probe(ep.breaker) as probe,
            ):
                admitted = False
                try:
                    call = await ep._provider_call()
                    async with ep._admitted(estimate):
                        admitted = True
                        pieces = ep.provider.stream_chat(call, messages, params)
                        try:
                            complete = False
                            while True:
                                try:
                                    async with asyncio.timeout(ep.timeout_s):
                                        piece = await anext(pieces)
                                except StopAsyncIteration:
                                    break
                                except TimeoutError:
                                    if text:
                                        raise StreamInterruptedError(
                                            f"endpoint {ep.name!r}: the stream stalled for"
                                            f" {ep.timeout_s:g}s mid-answer"
                                        ) from None
                                    raise ModelTimeoutError(
                                        f"endpoint {ep.name!r}: no token within {ep.timeout_s:g}s"
                                    ) from None
                                model = piece.model or model
                                got_in = (
                                    piece.input_tokens if piece.input_tokens is not None else got_in
                                )
                                got_out = (
                                    piece.output_tokens
                                    if piece.output_tokens is not None
                                    else got_out
                                )
                                finish = piece.finish_reason or finish
                                if piece.text:
                                    if ttft is None:
                                        ttft = (time.perf_counter() - t0) * 1000
                                    text.append(piece.text)
                                    emitted = True
                                    queue.put_nowait(StreamEvent("delta", piece.text, ep.name))
                                    if publisher is not None:
                                        publisher.delta(
                                            piece.text, endpoint=ep.name, attempt=attempt
                                        )
                                if piece.done:
                                    complete = True
                                    break
                            if not complete:
                                raise StreamInterruptedError(
                                    f"endpoint {ep.name!r}: the stream ended before the answer"
                                    " was complete"
                                )
                        finally:
                            with contextlib.suppress(Exception):
                                await pieces.aclose()  # type: ignore[attr-defined]
                except ModelError as exc:
                    if admitted:  # weir's own limits refusing the call say nothing of the endpoint
                        probe.failure(exc)
                    ep._key_refused(exc)
                    # A broken stream was still billed: count what was sent and received.
                    usage = (
                        _usage(got_in, None, estimate, "".join(text))
                        if text or got_in
                        else Usage(0, 0, "provider")
                    )
                    cost = ep.cost(usage)
                    ep._record(
                        scope,
                        span,
                        "chat",
                        "FAILURE",
                        started_at,
                        t0,
                        usage,
                        cost,
                        meta,
                        fallback_from,
                        error_type=exc.error_type,
                        response_model=model,
                        ttft_ms=ttft,
                        streamed=True,
                    )
                    if meta.on_cost is not None and cost:
                        await meta.on_cost(cost)
                    last = exc
                    if emitted:
                        restarts += 1
                        emitted = False
                        queue.put_nowait(StreamEvent("restart", "", ep.name, exc.error_type))
                        if publisher is not None:
                            publisher.restart(
                                endpoint=ep.name, attempt=attempt, error_type=exc.error_type
                            )
                    if not exc.retriable:
                        if publisher is not None:
                            publisher.abort(
                                endpoint=ep.name, attempt=attempt, error_type=exc.error_type
                            )
                        raise
                    if isinstance(exc, StreamInterruptedError):
                        continue  # the same endpoint once more, then the fallbacks
                    break
                full = "".join(text)
                usage = _usage(got_in, got_out, estimate, full)
                cost = ep.cost(usage)
                probe.success()
                ep.latency.observe((time.perf_counter() - t0) * 1000)
                ep._record(
                    scope,
                    span,
                    "chat",
                    "SUCCESS",
                    started_at,
                    t0,
                    usage,
                    cost,
                    meta,
                    fallback_from,
                    response_model=model,
                    ttft_ms=ttft,
                    streamed=True,
                )
            if meta.on_cost is not None and cost:
                await meta.on_cost(cost)
            if publisher is not None:
                publisher.done(endpoint=ep.name, attempt=attempt, usage=usage, cost_usd=cost)
            return ChatResult(
                endpoint=ep.name,
                model=model or ep.model,
                usage=usage,
                cost_usd=cost,
                rule=meta.rule,
                rules_version=meta.rules_version,
                text=full,
                finish_reason=finish,
                restarts=restarts,
            )
    assert last is not None
    if publisher is not None:
        publisher.abort(endpoint=first.name, attempt=attempt, error_type=last.error_type)
    raise last
