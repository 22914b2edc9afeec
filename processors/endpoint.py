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
``RetryPolicy`` honours.  Each operation's call along the chain is in
``weir.processors._operations``; streamed calls are ``ChatStream``s
(``weir.processors.chat_stream``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError, ModelError, RateLimitedError, SecretError
from weir.core.secrets import SecretRef
from weir.processors._call import NO_META, CallMeta
from weir.processors._operations import (
    check_messages,
    run_chat,
    run_classify,
    run_embed,
    run_generate_image,
    run_transcribe,
)
from weir.processors.admission import Admission
from weir.processors.chat_stream import ChatStream
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker
from weir.processors.cost import FREE, Price, price_of
from weir.processors.limits import LatencyStats, Limits
from weir.processors.providers._base import Message, Provider, ProviderCall
from weir.processors.results import (
    ChatResult,
    Classification,
    Embeddings,
    Images,
    Transcription,
    Usage,
)
from weir.processors.services import ModelServices, services_in_use, services_now
from weir.processors.substitution import DirectCallProbed, probe, substitute
from weir.processors.tokens import estimate_tokens
from weir.streams.journal import journaled_call

if TYPE_CHECKING:
    from weir.processors.batcher import Batching, EmbeddingBatcher

__all__ = ["ModelEndpoint"]

log = logging.getLogger("weir.models")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

DEFAULT_BREAKER = BreakerPolicy()


class ModelEndpoint:
    """A named model behind a provider.

    ``price`` (or ``input_cost_per_token``/``output_cost_per_token``, or
    ``cost_per_token`` for both) overrides the price table; ``api_key`` (a
    secret reference) overrides the provider's.  ``timeout_s`` bounds a whole
    call, and for streamed calls the wait for the first token and between
    tokens; it starts once the call is admitted under ``limits`` (a call waits
    up to ``queue_timeout_s`` for that, then fails ``rate_limited``).
    ``breaker=None`` turns the circuit breaker off.  ``batching`` sends the
    texts of concurrent ``embed()`` calls together (``EmbeddingBatcher``).
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
        batching: Batching | None = None,
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
        self.breaker_policy = breaker
        for fb in fallbacks:
            if not isinstance(fb, ModelEndpoint):
                raise ConfigError(f"{where}: fallbacks must be ModelEndpoints, got {fb!r}")
            if fb is self:
                raise ConfigError(f"{where} cannot be its own fallback")
        self.fallbacks = tuple(fallbacks)
        self.stream_retries = stream_retries
        self.params = dict(params or {})
        self.batching = batching
        self._embedder: EmbeddingBatcher | None = None
        self.latency = LatencyStats()
        self.admission = Admission(
            name,
            limits=self.limits,
            pool_size=provider.max_concurrency,
            queue_timeout_s=self.queue_timeout_s,
        )

    def __repr__(self) -> str:
        return f"ModelEndpoint({self.name!r}, model={self.model!r}, {self.provider.describe()})"

    # -- prices -------------------------------------------------------------------------

    def price(self, settings: WeirSettings | None = None) -> Price | None:
        """The price in force: own, configured, or the default table's; ``None`` if unknown.

        ``settings``: whose price table (default: the services' in use, else the
        default table alone).
        """
        if settings is None:
            services = services_in_use()
            settings = services.settings if services is not None else None
        return price_of(self.model, settings, self._own_price)

    def cost(self, usage: Usage) -> Decimal:
        price = self.price()
        if price is None:
            return Decimal(0)
        units = price.units_cost(images=usage.images, audio_seconds=usage.audio_seconds)
        return price.cost(usage.input_tokens, usage.output_tokens) + units

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
        return await run_chat(self, messages, meta, params)

    @journaled_call(Embeddings)
    async def embed(
        self, texts: Sequence[str], *, meta: CallMeta = NO_META, **params: Any
    ) -> Embeddings:
        """Embed ``texts`` in one call; vectors come back in input order."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"endpoint {self.name!r}: embed() takes a list of strings")
        if self.batching is not None:  # with the texts of other steps' calls, in one call
            if self._embedder is None:
                from weir.processors.batcher import EmbeddingBatcher

                b = self.batching
                self._embedder = EmbeddingBatcher(
                    self,
                    max_batch_items=b.max_batch_items,
                    max_batch_tokens=b.max_batch_tokens,
                    max_wait_ms=b.max_wait_ms,
                    max_in_flight=b.max_in_flight,
                )
            return await self._embedder.embed(texts, meta=meta, **params)
        return await self._embed(texts, sum(estimate_tokens(t) for t in texts), meta, params)

    async def _embed(
        self, texts: Sequence[str], estimate: int, meta: CallMeta, params: Mapping[str, Any]
    ) -> Embeddings:
        """``embed`` with the input tokens already estimated (the batcher has them)."""
        return await run_embed(self, texts, estimate, meta, params)

    @journaled_call(Classification)
    async def classify(
        self, text: str, *, meta: CallMeta = NO_META, **params: Any
    ) -> Classification:
        """A label for ``text`` (local classifiers)."""
        return await run_classify(self, text, meta, params)

    async def generate_image(
        self, prompt: str, *, n: int = 1, meta: CallMeta = NO_META, **params: Any
    ) -> Images:
        """``n`` images for ``prompt``, priced per image (``Price.per_unit(image=...)``).

        Keep the bytes out of Kafka: return an image's ``url``, or the path
        ``GeneratedImage.write`` put it at, from the step.
        """
        return await run_generate_image(self, prompt, n, meta, params)

    async def transcribe(
        self,
        audio: bytes,
        *,
        filename: str = "audio.wav",
        duration_s: float | None = None,
        meta: CallMeta = NO_META,
        **params: Any,
    ) -> Transcription:
        """The text of ``audio``, priced per second (``Price.per_unit(audio_second=...)``).

        Seconds are the provider's measure; ``duration_s`` is used when it gives none
        (without either, the call is priced at 0 and its usage marked an estimate).
        """
        return await run_transcribe(self, audio, filename, duration_s, meta, params)

    def stream_chat(
        self, messages: Sequence[Message], *, meta: CallMeta = NO_META, **params: Any
    ) -> ChatStream:
        """A streamed chat answer: iterate its ``StreamEvent``s, or ``await .collect()``."""
        check_messages(self.name, messages)
        return ChatStream(self, list(messages), {**self.params, **params}, meta)

    # -- what one try needs of the endpoint (``weir.processors._call.Callee``) -------------

    def chain(self) -> tuple[ModelEndpoint, ...]:
        """This endpoint, then its fallbacks, in the order calls try them.

        In a step replay (``substituting``) the candidate's chain instead; in a what-if
        evaluation (``probing``) no model may be called.
        """
        if probe() is not None:
            raise DirectCallProbed(self.name)
        candidate = substitute()
        if candidate is not None and candidate is not self:
            return candidate.chain()
        return (self, *self.fallbacks)

    async def provider_call(self) -> ProviderCall:
        """The provider call's identity, with the key resolved now (it may have rotated)."""
        services = services_now()
        services.add_endpoint(self)
        key: SecretStr | None = None
        if self._key_ref is not None:
            key = await services.resolver.resolve(self._key_ref)
        return ProviderCall(endpoint=self.name, model=self.model, api_key=key)

    def key_refused(self, error: ModelError) -> None:
        """After a 401/403 the key may have been rotated: resolve it afresh next time.

        After a 429 with ``Retry-After``, every call of the group's workers waits that long.
        """
        if error.status in (401, 403) and self._key_ref is not None:
            services_now().resolver.invalidate(self._key_ref)
        wait = getattr(error, "retry_after_s", None)
        if isinstance(error, RateLimitedError) and isinstance(wait, int | float) and wait > 0:
            self.admission.pause(wait)

    def debit_tokens(self, tokens: int) -> None:
        """Charge tokens used beyond the admission's estimate to the tokens-per-minute limit."""
        self.admission.debit_tokens(tokens)

    def admitted(self, tokens: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for room under the limits (``Admission.admitted``)."""
        return self.admission.admitted(tokens)

    @property
    def in_flight(self) -> int:
        """Calls of this endpoint running now in this process."""
        return self.admission.in_flight

    @property
    def breaker(self) -> CircuitBreaker | None:
        """This endpoint's circuit breaker in the services in use (``None``: turned off)."""
        return services_now().breaker(self.name, self.breaker_policy)

    def state(self, services: ModelServices) -> dict[str, Any]:
        """Breaker, latency and load of this endpoint in ``services`` (for ``/models``)."""
        price = self.price(services.settings)
        breaker = services.breaker(self.name, self.breaker_policy)
        return {
            "model": self.model,
            "provider": self.provider.describe(),
            "circuit": breaker.snapshot() if breaker is not None else None,
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
