"""The operations of a ``ModelEndpoint``, each tried along its fallback chain.

For each operation (chat, embeddings, classification, image generation,
transcription): what the provider is asked, how the try's usage is counted, and
the result the caller gets.  ``with_fallbacks`` makes one try
(``weir.processors._call.one_try``) of each endpoint of the chain in turn,
within that endpoint's timeout, until one answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from weir.core.errors import ConfigError, ModelError, ModelTimeoutError
from weir.processors._call import CallMeta, Operation, breaker_refused, one_try, usage_of
from weir.processors.providers._base import Message, ProviderCall
from weir.processors.results import (
    ChatResult,
    Classification,
    Embeddings,
    GeneratedImage,
    Images,
    Transcription,
    Usage,
)
from weir.processors.tokens import estimate_messages, estimate_tokens

if TYPE_CHECKING:
    from weir.processors.endpoint import ModelEndpoint

__all__ = [
    "Once",
    "check_messages",
    "run_chat",
    "run_classify",
    "run_embed",
    "run_generate_image",
    "run_transcribe",
    "with_fallbacks",
]

Once = Callable[["ModelEndpoint", ProviderCall], Awaitable[tuple[Any, Usage, str]]]
"""One try's provider call: its answer, its usage, and the model that answered."""


async def run_chat(
    endpoint: ModelEndpoint,
    messages: Sequence[Message],
    meta: CallMeta,
    params: Mapping[str, Any],
) -> ChatResult:
    """``ModelEndpoint.chat``."""
    check_messages(endpoint.name, messages)
    merged = {**endpoint.params, **params}
    estimate = estimate_messages(messages)

    async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
        done = await ep.provider.chat(call, messages, merged)
        usage = usage_of(done.input_tokens, done.output_tokens, estimate, done.text)
        return done, usage, done.model

    done, usage, cost, ep = await with_fallbacks(endpoint, "chat", once, estimate, meta)
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


async def run_embed(
    endpoint: ModelEndpoint,
    texts: Sequence[str],
    estimate: int,
    meta: CallMeta,
    params: Mapping[str, Any],
) -> Embeddings:
    """``ModelEndpoint._embed``: ``texts`` in one call, their input tokens already estimated."""
    merged = {**endpoint.params, **params}

    async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
        done = await ep.provider.embed(call, texts, merged)
        if done.input_tokens is not None:
            usage = Usage(done.input_tokens, 0, "provider")
        else:
            usage = Usage(estimate, 0, "estimate")
        return done, usage, done.model

    done, usage, cost, ep = await with_fallbacks(endpoint, "embeddings", once, estimate, meta)
    return Embeddings(
        endpoint=ep.name,
        model=done.model,
        usage=usage,
        cost_usd=cost,
        rule=meta.rule,
        rules_version=meta.rules_version,
        vectors=done.vectors,
    )


async def run_classify(
    endpoint: ModelEndpoint, text: str, meta: CallMeta, params: Mapping[str, Any]
) -> Classification:
    """``ModelEndpoint.classify``."""
    merged = {**endpoint.params, **params}
    estimate = estimate_tokens(text)

    async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
        done = await ep.provider.classify(call, text, merged)
        return done, Usage(estimate, 0, "estimate"), done.model

    done, usage, cost, ep = await with_fallbacks(endpoint, "classification", once, estimate, meta)
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


async def run_generate_image(
    endpoint: ModelEndpoint, prompt: str, n: int, meta: CallMeta, params: Mapping[str, Any]
) -> Images:
    """``ModelEndpoint.generate_image``."""
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f"endpoint {endpoint.name!r}: generate_image() takes a prompt string")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"endpoint {endpoint.name!r}: n must be a positive integer")
    merged = {**endpoint.params, **params, "n": n}

    async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
        done = await ep.provider.generate_image(call, prompt, merged)
        return done, Usage(0, 0, "provider", images=len(done.urls)), done.model

    done, usage, cost, ep = await with_fallbacks(endpoint, "image_generation", once, 0, meta)
    return Images(
        endpoint=ep.name,
        model=done.model,
        usage=usage,
        cost_usd=cost,
        rule=meta.rule,
        rules_version=meta.rules_version,
        images=[GeneratedImage(u, d) for u, d in zip(done.urls, done.data, strict=True)],
    )


async def run_transcribe(
    endpoint: ModelEndpoint,
    audio: bytes,
    filename: str,
    duration_s: float | None,
    meta: CallMeta,
    params: Mapping[str, Any],
) -> Transcription:
    """``ModelEndpoint.transcribe``."""
    if not isinstance(audio, bytes | bytearray) or not audio:
        raise ConfigError(f"endpoint {endpoint.name!r}: transcribe() takes the audio's bytes")
    merged = {**endpoint.params, **params}

    async def once(ep: ModelEndpoint, call: ProviderCall) -> tuple[Any, Usage, str]:
        done = await ep.provider.transcribe(call, bytes(audio), filename, merged)
        seconds = done.duration_s if done.duration_s is not None else duration_s
        source: Literal["provider", "estimate"] = (
            "provider" if done.duration_s is not None else "estimate"
        )
        # Milliseconds: enough for per-second prices, and exact in Decimal.
        exact = Decimal(str(round(seconds, 3))) if seconds is not None else Decimal(0)
        return done, Usage(0, 0, source, audio_seconds=exact), done.model

    done, usage, cost, ep = await with_fallbacks(endpoint, "transcription", once, 0, meta)
    return Transcription(
        endpoint=ep.name,
        model=done.model,
        usage=usage,
        cost_usd=cost,
        rule=meta.rule,
        rules_version=meta.rules_version,
        text=done.text,
        duration_s=float(usage.audio_seconds) if usage.audio_seconds else None,
        language=done.language,
    )


async def with_fallbacks(
    endpoint: ModelEndpoint, operation: Operation, once: Once, estimate: int, meta: CallMeta
) -> tuple[Any, Usage, Decimal, ModelEndpoint]:
    """The first answer along ``endpoint.chain()``: the answer, usage, cost and who gave it.

    An endpoint whose breaker is open, or whose try fails retriably, passes the call
    on; a failure that is not retriable is raised at once; after the last endpoint,
    the last failure is raised.
    """
    last: ModelError | None = None
    chain = endpoint.chain()
    for ep in chain:
        fallback_from = None if ep is chain[0] else chain[0].name
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


def check_messages(endpoint: str, messages: Sequence[Message]) -> None:
    """Raise ``ConfigError`` unless ``messages`` is a non-empty list of role mappings."""
    if isinstance(messages, str | bytes) or not messages:
        raise ConfigError(
            f"endpoint {endpoint!r}: messages must be a non-empty list of"
            " {'role': ..., 'content': ...} mappings"
        )
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            raise ConfigError(f"endpoint {endpoint!r}: every message needs a 'role', got {m!r}")
