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
attempt and opens an OTel GenAI client span (``weir.processors._call``, one
path for plain and streamed calls).  When the call fails, or the breaker is
open, the next endpoint of ``fallbacks`` takes it within the same attempt;
what still fails raises a ``ModelError`` whose ``retriable`` flag the step's
``RetryPolicy`` honours.  Streamed calls are ``ChatStream``s
(``weir.processors.chat_stream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import (
    ConfigError,
    ModelError,
    ModelTimeoutError,
    RateLimitedError,
    SecretError,
)
from weir.core.secrets import SecretRef
from weir.processors._call import NO_META, CallMeta, Operation, breaker_refused, one_try, usage_of
from weir.processors._env import resolver_for, settings_now
from weir.processors.chat_stream import ChatStream
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker
from weir.processors.cost import FREE, Price, price_of
from weir.processors.limits import LatencyStats, Limits, TokenBucket
from weir.processors.providers._base import Message, Provider, ProviderCall
from weir.processors.results import ChatResult, Classification, Embeddings, Usage
from weir.processors.tokens import estimate_messages, estimate_tokens
from weir.streams.journal import journaled_call

__all__ = ["ModelEndpoint", "endpoint_states"]

log = logging.getLogger("weir.models")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
_ENDPOINTS: weakref.WeakValueDictionary[str, ModelEndpoint] = weakref.WeakValueDictionary()

DEFAULT_BREAKER = BreakerPolicy()
Once = Callable[["ModelEndpoint", ProviderCall], Awaitable[tuple[Any, Usage, str]]]


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
        self, messages: Sequence[Message], *, meta: CallMeta = NO_META, **params: Any
    ) -> ChatResult:
        """One chat completion (falls back along ``fallbacks``)."""
        _check_messages(self.name, messages)
        merged = {**self.params, **params}
        estimate = estimate_messages(messages)

        async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
            done = await ep.provider.chat(call, messages, merged)
            usage = usage_of(done.input_tokens, done.output_tokens, estimate, done.text)
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
        self, texts: Sequence[str], *, meta: CallMeta = NO_META, **params: Any
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
        self, text: str, *, meta: CallMeta = NO_META, **params: Any
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
        self, messages: Sequence[Message], *, meta: CallMeta = NO_META, **params: Any
    ) -> ChatStream:
        """A streamed chat answer: iterate its ``StreamEvent``s, or ``await .collect()``."""
        _check_messages(self.name, messages)
        return ChatStream(self, list(messages), {**self.params, **params}, meta)

    async def _with_fallbacks(
        self, operation: Operation, once: Once, estimate: int, meta: CallMeta
    ) -> tuple[Any, Usage, Decimal, ModelEndpoint]:
        last: ModelError | None = None
        for ep in self.chain():
            fallback_from = None if ep is self else self.name
            refused = breaker_refused(ep, operation, meta, fallback_from, streamed=False)
            if refused is not None:
                last = refused
                continue
            try:
                async with one_try(ep, operation, meta, fallback_from, estimate) as attempt:
                    try:
                        async with asyncio.timeout(ep.timeout_s):
                            done, attempt.usage, attempt.model = await once(ep, attempt.call)
                    except TimeoutError:
                        raise ModelTimeoutError(
                            f"endpoint {ep.name!r} did not answer within {ep.timeout_s:g}s"
                        ) from None
            except ModelError as exc:
                last = exc
                if not exc.retriable:
                    raise
                continue
            return done, attempt.usage, attempt.cost, ep
        assert last is not None
        raise last

    # -- what one try needs of the endpoint (``weir.processors._call.Callee``) -------------

    def chain(self) -> tuple[ModelEndpoint, ...]:
        """This endpoint, then its fallbacks, in the order calls try them."""
        return (self, *self.fallbacks)

    async def provider_call(self) -> ProviderCall:
        """The provider call's identity, with the key resolved now (it may have rotated)."""
        key: SecretStr | None = None
        if self._key_ref is not None:
            key = await resolver_for(settings_now()).resolve(self._key_ref)
        return ProviderCall(endpoint=self.name, model=self.model, api_key=key)

    def key_refused(self, error: ModelError) -> None:
        """After a 401/403 the key may have been rotated: resolve it afresh next time."""
        if error.status in (401, 403) and self._key_ref is not None:
            resolver_for(settings_now()).invalidate(self._key_ref)

    def debit_tokens(self, tokens: int) -> None:
        """Charge tokens used beyond the admission's estimate to the tokens-per-minute limit."""
        if self._tokens is not None:
            self._tokens.debit(tokens)

    @contextlib.asynccontextmanager
    async def admitted(self, tokens: int) -> AsyncIterator[None]:
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
