"""What a step can learn about the request it is running for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StepContext"]


@dataclass(frozen=True, slots=True)
class StepContext:
    """Injected into any step parameter annotated ``StepContext``."""

    request_id: str
    pipeline: str
    step: str
    attempt: int
    worker_id: str
    request: dict[str, Any] = field(repr=False)
    """The request payload as submitted."""
    options: dict[str, str] = field(default_factory=dict)
    submitted_at: int = 0
    """Epoch milliseconds when the client submitted the request."""
