"""What model calls return to a step: the answer, its usage, its exact cost, and who served it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ChatResult",
    "Classification",
    "Embeddings",
    "GeneratedImage",
    "Images",
    "StreamEvent",
    "Transcription",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call; ``source`` says whether the provider reported them or weir estimated."""

    input_tokens: int = 0
    output_tokens: int = 0
    source: Literal["provider", "estimate"] = "provider"
    images: int = 0
    """Images generated (image models are priced per image)."""
    audio_seconds: Decimal = Decimal(0)
    """Seconds of audio transcribed (speech-to-text models are priced per second)."""


@dataclass(frozen=True, slots=True)
class _Served:
    endpoint: str
    """The endpoint that answered (a fallback's name when the primary did not)."""
    model: str
    usage: Usage
    cost_usd: Decimal
    """Of the answering call only; ``cost_usd`` on the request's result sums every call."""
    rule: str | None
    rules_version: int | None


@dataclass(frozen=True, slots=True)
class ChatResult(_Served):
    """A chat completion."""

    text: str = ""
    finish_reason: str | None = None
    restarts: int = 0
    """Streamed calls: how many times the answer broke off and started again."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The provider's response body (non-streamed calls)."""


@dataclass(frozen=True, slots=True)
class Embeddings(_Served):
    """One vector per input, in input order."""

    vectors: list[list[float]] = field(default_factory=list, repr=False)


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One image: a URL the provider hosts, or its bytes (``b64_json`` answers)."""

    url: str | None
    data: bytes | None = field(default=None, repr=False)

    def write(self, path: str | Path) -> Path:
        """Write the bytes to ``path`` (a blob store's mount, say); return the path.

        Images are large: a step returns this path or the ``url``, not the bytes,
        which would make the step's output too large for a Kafka message.
        """
        if self.data is None:
            raise ValueError(f"this image is at {self.url!r}; it has no bytes to write")
        target = Path(path)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True, slots=True)
class Images(_Served):
    """Generated images, priced per image."""

    images: list[GeneratedImage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Transcription(_Served):
    """Text of an audio file, priced per second of audio."""

    text: str = ""
    duration_s: float | None = None
    """Seconds of audio (the provider's measure, else the caller's ``duration_s``)."""
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Classification(_Served):
    """A label (and optionally its score and every label's score) from a local classifier."""

    label: str = ""
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a streamed chat answer, as a step iterates it.

    ``delta``: more text.  ``restart``: the answer broke off (``error_type`` says
    why) and starts again from nothing on ``endpoint``; drop the text so far.
    """

    kind: Literal["delta", "restart"]
    text: str
    endpoint: str
    error_type: str | None = None
