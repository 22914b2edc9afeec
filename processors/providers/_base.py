"""The seam between endpoints and providers: primitive requests in, primitive answers out.

A provider knows one wire format (OpenAI's, Anthropic's, an in-process
function).  It knows nothing of routing, budgets, breakers or Kafka: the
endpoint does all of that around it.  Providers raise weir's ``ModelError``
family only, with messages that name the endpoint and never a secret.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from weir.core.errors import ModelRequestError

__all__ = [
    "Completion",
    "Embedded",
    "Imaged",
    "Labelled",
    "Piece",
    "Provider",
    "ProviderCall",
    "Transcribed",
]

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """Who is calling and with what: the endpoint's name (for messages), model and key."""

    endpoint: str
    model: str
    api_key: SecretStr | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    input_tokens: int | None
    """``None`` when the provider did not report usage."""
    output_tokens: int | None
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Piece:
    """One parsed event of a streamed answer; most carry only ``text``."""

    text: str = ""
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    """The provider said the answer is complete (OpenAI ``[DONE]``, Anthropic ``message_stop``)."""


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]
    model: str
    input_tokens: int | None


@dataclass(frozen=True, slots=True)
class Imaged:
    """Generated images: each a URL the provider hosts, or the image's bytes."""

    urls: list[str | None]
    data: list[bytes | None] = field(repr=False)
    model: str


@dataclass(frozen=True, slots=True)
class Transcribed:
    text: str
    model: str
    duration_s: float | None
    """Seconds of audio as the provider measured them (``None``: not reported)."""
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Labelled:
    label: str
    score: float | None
    scores: dict[str, float]
    model: str


class Provider(ABC):
    """One wire format; ``name`` is the OTel ``gen_ai.provider.name``."""

    name: str = "provider"
    api_key: str | None = None
    """The default secret reference for endpoints that do not set their own."""
    max_concurrency: int | None = None
    """Calls the provider can carry at once (an HTTP pool's size); endpoints queue beyond it."""

    async def chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> Completion:
        raise ModelRequestError(f"endpoint {call.endpoint!r}: {self.name} does not offer chat")

    def stream_chat(
        self, call: ProviderCall, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> AsyncIterator[Piece]:
        raise ModelRequestError(
            f"endpoint {call.endpoint!r}: {self.name} does not offer streamed chat"
        )

    async def embed(
        self, call: ProviderCall, texts: Sequence[str], params: Mapping[str, Any]
    ) -> Embedded:
        raise ModelRequestError(
            f"endpoint {call.endpoint!r}: {self.name} does not offer embeddings"
        )

    async def classify(self, call: ProviderCall, text: str, params: Mapping[str, Any]) -> Labelled:
        raise ModelRequestError(
            f"endpoint {call.endpoint!r}: {self.name} does not offer classification"
        )

    async def generate_image(
        self, call: ProviderCall, prompt: str, params: Mapping[str, Any]
    ) -> Imaged:
        raise ModelRequestError(
            f"endpoint {call.endpoint!r}: {self.name} does not offer image generation"
        )

    async def transcribe(
        self, call: ProviderCall, audio: bytes, filename: str, params: Mapping[str, Any]
    ) -> Transcribed:
        raise ModelRequestError(
            f"endpoint {call.endpoint!r}: {self.name} does not offer audio transcription"
        )

    @abstractmethod
    def describe(self) -> str:
        """Where the provider sends calls, for messages and ``/models`` (no secrets)."""

    async def aclose(self) -> None:  # noqa: B027 (most providers hold nothing to release)
        """Release connections (idempotent)."""
