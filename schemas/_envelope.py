"""A value on its way between steps (``Envelope``) and the model calls it carries.

Not compiled: a native class built from a decoded tuple cost more than this dataclass
(1.9 vs 1.5 µs per decode), and would check every field's type as it is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any, Literal

from weir.core.errors import UndecodableError
from weir.schemas._codec import load_schema
from weir.schemas._envelope_codec import encode_fast, envelope_fields

__all__ = ["ENVELOPE_SCHEMA", "Envelope", "EnvelopeKind", "ModelCall", "total_usage"]

ENVELOPE_SCHEMA = load_schema("envelope")


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


EnvelopeKind = Literal["VALUE", "SKIP", "JOINED", "FAILURE"]


@dataclass(slots=True)
class Envelope:
    """One value on its way from ``source`` to ``step`` (hot path: a plain dataclass)."""

    request_id: str
    pipeline: str
    step: str
    source: str
    kind: EnvelopeKind
    submitted_at: int
    created_at: int
    request: str
    payload: str | None
    attempt: int = 1
    traceparent: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    not_before: int = 0
    """Epoch milliseconds before which a retry must not start."""
    first_failed_at: int | None = None
    inputs: dict[str, str | None] = field(default_factory=dict)
    """``JOINED``: every input's payload by source step."""
    calls: list[ModelCall] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None
    failed_step: str | None = None
    replay: str | None = None
    _request_object: dict[str, Any] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """``request`` parsed, once (``request_object``); not on the wire, and not carried by
    ``dataclasses.replace`` (whose ``request`` may differ)."""

    def request_object(self) -> dict[str, Any]:
        """``request`` as a dict, parsed on first use and kept: every reader of this
        envelope (the step's context, its bound fields) shares the one parse."""
        parsed = self._request_object
        if parsed is None:
            parsed = self._request_object = json.loads(self.request)
        return parsed

    def with_request_object(self, parsed: dict[str, Any]) -> Envelope:
        """This envelope, knowing ``parsed`` is its ``request`` already parsed."""
        self._request_object = parsed
        return self

    def encode(self) -> bytes:
        fast = encode_fast(ENVELOPE_SCHEMA.header, self)
        if fast is not None:
            return fast
        return ENVELOPE_SCHEMA.encode(
            {
                "request_id": self.request_id,
                "pipeline": self.pipeline,
                "step": self.step,
                "source": self.source,
                "kind": self.kind,
                "attempt": self.attempt,
                "not_before": self.not_before,
                "first_failed_at": self.first_failed_at,
                "submitted_at": self.submitted_at,
                "created_at": self.created_at,
                "traceparent": self.traceparent,
                "request": self.request,
                "options": self.options,
                "path": self.path,
                "payload": self.payload,
                "inputs": self.inputs,
                "calls": [c.to_record() for c in self.calls],
                "error_type": self.error_type,
                "error_message": self.error_message,
                "failed_step": self.failed_step,
                "replay": self.replay,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> Envelope:
        if not raw:
            raise UndecodableError("empty step message")
        if ENVELOPE_SCHEMA.is_framed(raw) and (fast := envelope_fields(raw)) is not None:
            return cls(*fast)
        record = ENVELOPE_SCHEMA.decode(raw)
        if record["calls"]:
            record["calls"] = [ModelCall.from_record(c) for c in record["calls"]]
        return cls(**record)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (join changelogs store waiting inputs this way)."""
        record = asdict(self)
        del record["_request_object"]
        record["calls"] = [c.to_record() for c in self.calls]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Envelope:
        calls = [ModelCall.from_record(c) for c in record.get("calls", ())]
        return cls(**{**record, "calls": calls})
