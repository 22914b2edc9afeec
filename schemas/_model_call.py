"""A model call's record (``ModelCall``): what one call to an endpoint cost and returned.

Kept apart from ``Envelope`` (``schemas/_envelope.py``), a compiled native class: this stays
a plain dataclass, which replay, shadow runs and tests read with ``dataclasses``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Literal

__all__ = ["ModelCall", "total_usage"]


@dataclass(slots=True)
class ModelCall:
    """One call to a model endpoint (``ModelCall`` in the schemas); cost is an exact Decimal."""

    step: str
    attempt: int
    endpoint: str
    provider: str
    model: str
    operation: str
    status: Literal["SUCCESS", "FAILURE"]
    started_at: int
    """Epoch milliseconds."""
    duration_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    usage_source: Literal["provider", "estimate"] = "provider"
    cost_usd: Decimal = Decimal(0)
    error_type: str | None = None
    ttft_ms: float | None = None
    streamed: bool = False
    rule: str | None = None
    rules_version: int | None = None
    fallback_from: str | None = None

    def to_record(self) -> dict[str, Any]:
        # Every field is a scalar: a shallow read, not asdict()'s deep copy of each value
        # (that was a tenth of a batched embedding worker's CPU).
        record = {name: getattr(self, name) for name in _MODEL_CALL_FIELDS}
        record["cost_usd"] = str(self.cost_usd)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelCall:
        return cls(**{**record, "cost_usd": Decimal(record.get("cost_usd") or "0")})


_MODEL_CALL_FIELDS = tuple(f.name for f in fields(ModelCall))


def total_usage(calls: Iterable[ModelCall]) -> tuple[int, int, Decimal]:
    """``(input_tokens, output_tokens, cost_usd)`` summed over ``calls``."""
    tokens_in = tokens_out = 0
    cost = Decimal(0)
    for call in calls:
        tokens_in += call.input_tokens
        tokens_out += call.output_tokens
        cost += call.cost_usd
    return tokens_in, tokens_out, cost
