"""What the trace queries return: timelines, statistics, latency series (JSON-ready).

>>> a = StepAttempt("llm", 1, "SUCCESS", "committed", None, None, 1_000, 1_400, 50.0, 350.0,
...                 "w1", "m", "p", "e", None, 3, 4, "0.01", "", "")
>>> a.ready_at
950.0
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "CostByModel",
    "FailureCount",
    "LatencyPoint",
    "SlowRequest",
    "Stats",
    "StepAttempt",
    "StepStats",
    "StepTime",
    "Timeline",
    "dumps",
]


@dataclasses.dataclass
class StepAttempt:
    """One attempt of a step, as stored."""

    step_name: str
    attempt: int
    status: str
    disposition: str
    error_type: str | None
    error_message: str | None
    started_at: int
    """Epoch milliseconds, as are the other ``*_at`` fields."""
    created_at: int
    queue_wait_ms: float
    duration_ms: float
    worker_id: str
    model: str | None
    provider: str | None
    endpoint: str | None
    routing_rule: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: str
    trace_id: str
    span_id: str
    input: str | None = None
    output: str | None = None

    @property
    def ready_at(self) -> float:
        """When the attempt's input was ready to be picked up (epoch ms)."""
        return self.started_at - self.queue_wait_ms


@dataclasses.dataclass
class StepTime:
    """Where one step's time went in one request, beside the step's usual (p50) time."""

    step_name: str
    attempts: int
    status: str
    start_ms: float
    """Offset from the request's submission to when the step's first input was ready."""
    total_ms: float
    """From that moment to the end of the step's last attempt."""
    queue_wait_ms: float
    """Of the last attempt: time its input sat in Kafka."""
    processing_ms: float
    """Of the last attempt."""
    retry_ms: float
    """Before the last attempt: failed attempts and retry back-off."""
    p50_ms: float | None
    """The step's median ``total_ms`` over the baseline window (``None``: no baseline)."""
    excess_ms: float | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: str
    error_types: list[str]

    @property
    def ratio(self) -> float | None:
        if self.p50_ms is None or self.p50_ms <= 0:
            return None
        return self.total_ms / self.p50_ms

    @property
    def cause(self) -> str:
        """The largest part of the step's time: processing, queue wait or retries."""
        parts = {
            "processing": self.processing_ms,
            "queue wait": self.queue_wait_ms,
            "retries": self.retry_ms,
        }
        return max(parts, key=lambda k: parts[k])


@dataclasses.dataclass
class Timeline:
    """One request's path through its pipeline, step by step."""

    request_id: str
    pipeline_id: str
    submitted_at: int
    total_ms: float
    """Submission to the end of the last step attempt."""
    pipeline_p50_ms: float | None
    """Median ``total_ms`` of the pipeline's requests over the baseline window."""
    baseline_requests: int
    steps: list[StepTime]
    attempts: list[StepAttempt]
    slow_step: str | None
    """The step furthest above its own p50 (``None`` when none is above it)."""

    def verdict(self) -> str:
        """One sentence naming the step that made the request slow, and why."""
        head = f"request {self.request_id} took {_fmt_ms(self.total_ms)}"
        if self.pipeline_p50_ms is not None:
            head += f" (p50 of {self.pipeline_id}: {_fmt_ms(self.pipeline_p50_ms)})"
        step = next((s for s in self.steps if s.step_name == self.slow_step), None)
        if step is None or step.p50_ms is None:
            return head + "; no step was slower than its usual (p50) time"
        ratio = step.ratio
        times = f", {ratio:.1f}x" if ratio is not None else ""
        detail = {
            "processing": f"processing took {_fmt_ms(step.processing_ms)}",
            "queue wait": f"its input waited {_fmt_ms(step.queue_wait_ms)} in Kafka",
            "retries": (
                f"{step.attempts - 1} failed attempt(s)"
                + (f" ({', '.join(step.error_types)})" if step.error_types else "")
                + f" cost {_fmt_ms(step.retry_ms)}"
            ),
        }[step.cause]
        return (
            f"{head}; slow step: {step.step_name} took {_fmt_ms(step.total_ms)} against its p50"
            f" of {_fmt_ms(step.p50_ms)} (+{_fmt_ms(step.excess_ms or 0.0)}{times}): {detail}"
        )

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["verdict"] = self.verdict()
        for step, raw in zip(self.steps, body["steps"], strict=True):
            raw["ratio"] = step.ratio
            raw["cause"] = step.cause
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Timeline:
        fields = {f.name for f in dataclasses.fields(StepTime)}
        return cls(
            request_id=body["request_id"],
            pipeline_id=body["pipeline_id"],
            submitted_at=body["submitted_at"],
            total_ms=body["total_ms"],
            pipeline_p50_ms=body["pipeline_p50_ms"],
            baseline_requests=body["baseline_requests"],
            steps=[StepTime(**{k: v for k, v in s.items() if k in fields}) for s in body["steps"]],
            attempts=[StepAttempt(**a) for a in body["attempts"]],
            slow_step=body["slow_step"],
        )


@dataclasses.dataclass
class StepStats:
    pipeline_id: str
    step_name: str
    attempts: int
    failures: int
    requests: int
    duration_p50_ms: float
    duration_p95_ms: float
    duration_p99_ms: float
    queue_wait_p50_ms: float
    queue_wait_p95_ms: float
    queue_wait_p99_ms: float


@dataclasses.dataclass
class FailureCount:
    pipeline_id: str
    step_name: str
    error_type: str
    count: int
    avg_duration_ms: float


@dataclasses.dataclass
class CostByModel:
    pipeline_id: str
    model: str
    provider: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: str


@dataclasses.dataclass
class Stats:
    """Latency percentiles per step, failures by error type, cost by model, over a window."""

    since_ms: int
    pipeline: str | None
    steps: list[StepStats]
    failures: list[FailureCount]
    cost: list[CostByModel]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Stats:
        return cls(
            since_ms=body["since_ms"],
            pipeline=body["pipeline"],
            steps=[StepStats(**s) for s in body["steps"]],
            failures=[FailureCount(**f) for f in body["failures"]],
            cost=[CostByModel(**c) for c in body["cost"]],
        )


@dataclasses.dataclass
class LatencyPoint:
    """One minute (or bucket) of one step: percentiles from the per-minute aggregates."""

    minute: int
    """Epoch milliseconds of the bucket's start."""
    pipeline_id: str
    step_name: str
    attempts: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclasses.dataclass
class SlowRequest:
    request_id: str
    pipeline_id: str
    submitted_at: int
    total_ms: float
    attempts: int
    failures: int
    cost_usd: str


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def dumps(value: Any) -> str:
    """JSON for query results (dataclasses, Decimals)."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, Decimal):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(value, default=default)
