"""A result's wire form without building the pydantic ``Result`` (the answer stage's hot path).

Validating and dumping a ``Result`` cost more than the rest of answering a request; the
answer stage builds these fields from envelopes it already checked, so it writes them
directly: the same dict ``Result.to_wire("json")`` builds, in the same order, through the
same ``pydantic_core.to_json`` (byte-identical; ``tests/schemas/test_result_codec.py``).
Avro results still go through ``Result`` (``to_result``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import pydantic_core

from weir.schemas.messages import RESULT_JSON_VERSION, Result

__all__ = ["ResultFields"]


@dataclass(slots=True)
class ResultFields:
    """The fields of a ``Result``, as the answer stage has them."""

    request_id: str
    pipeline: str
    status: Literal["SUCCESS", "FAILURE"]
    output: str | None
    error_type: str | None
    error_message: str | None
    failed_step: str | None
    path: list[str]
    submitted_at: int
    completed_at: int
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    calls: list[dict[str, Any]]
    replay: str | None

    def to_result(self) -> Result:
        return Result(
            request_id=self.request_id,
            pipeline=self.pipeline,
            status=self.status,
            output=self.output,
            error_type=self.error_type,
            error_message=self.error_message,
            failed_step=self.failed_step,
            path=self.path,
            submitted_at=self.submitted_at,
            completed_at=self.completed_at,
            latency_ms=self.latency_ms,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            calls=self.calls,
            replay=self.replay,
        )

    def to_wire(self, fmt: Literal["json", "avro"], *, schema_id: int | None = None) -> bytes:
        """What ``self.to_result().to_wire(fmt, schema_id=schema_id)`` returns."""
        if fmt != "json":
            return self.to_result().to_wire(fmt, schema_id=schema_id)
        output = self.output
        return pydantic_core.to_json(
            {
                "request_id": self.request_id,
                "pipeline": self.pipeline,
                "status": self.status,
                "output": None if output is None else pydantic_core.from_json(output),
                "error_type": self.error_type,
                "error_message": self.error_message,
                "failed_step": self.failed_step,
                "path": self.path,
                "submitted_at": self.submitted_at,
                "completed_at": self.completed_at,
                "latency_ms": self.latency_ms,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cost_usd": self.cost_usd,
                "calls": self.calls,
                "replay": self.replay,
                "schema_version": RESULT_JSON_VERSION,
            }
        )
