"""Comparing a replay's candidate with what the step did live, over the same inputs.

The baseline of each replayed input is the step's live attempt: its trace
event in ``pipeline_events`` (status, error type, latency, tokens, cost) and
its recorded output.  Output agreement is the exact-match rate plus a score
from a pluggable scorer: a function of ``(baseline, candidate)`` texts
returning a similarity in [0, 1], or ``EmbeddingScorer`` (cosine similarity of
the two texts' embeddings from a configured endpoint).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import ModuleType

from weir.core.errors import ConfigError
from weir.processors.endpoint import ModelEndpoint
from weir.replays.records import ReplayOutcome, ReplayPlan
from weir.schemas.messages import total_usage

__all__ = [
    "Comparison",
    "EmbeddingScorer",
    "Example",
    "LiveAttempt",
    "Side",
    "compare",
    "exact_match",
    "load_scorer",
]

MONTH_MS = 30 * 24 * 3600 * 1000
Scorer = Callable[[str, str], float] | Callable[[str, str], Awaitable[float]]
"""A similarity in [0, 1] of a baseline and a candidate output (JSON texts)."""


def exact_match(baseline: str, candidate: str) -> float:
    """1.0 when the outputs are the same JSON text, else 0.0."""
    return 1.0 if baseline == candidate else 0.0


class EmbeddingScorer:
    """Cosine similarity of the two outputs' embeddings, from ``endpoint`` (one call per pair)."""

    def __init__(self, endpoint: ModelEndpoint) -> None:
        self.endpoint = endpoint
        self.__name__ = f"embedding:{endpoint.name}"

    async def __call__(self, baseline: str, candidate: str) -> float:
        a, b = (await self.endpoint.embed([baseline, candidate])).vectors
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def load_scorer(ref: str, *, modules: Sequence[ModuleType] = ()) -> Scorer:
    """``exact``, ``embedding:<endpoint name>`` (defined by one of ``modules``) or
    ``module:function``."""
    if ref == "exact":
        return exact_match
    if ref.startswith("embedding:"):
        from weir.replays.endpoints import endpoints_of

        ep = endpoints_of(modules).get(ref.removeprefix("embedding:"))
        if ep is None:
            raise ConfigError(
                f"--scorer {ref!r}: no such endpoint is defined by the module --import names"
            )
        return EmbeddingScorer(ep)
    module_name, sep, attr = ref.partition(":")
    if not sep:
        raise ConfigError(f"--scorer {ref!r}: use exact, embedding:<endpoint> or module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--scorer {ref!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"--scorer {ref!r} is not a function")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LiveAttempt:
    """The step's live attempt for one request (its last, from ``pipeline_events``)."""

    request_id: str
    status: str
    error_type: str | None
    duration_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    output: str | None = None
    """From the step's recorded output (``None`` when it produced none)."""


@dataclass(frozen=True)
class Side:
    """One side of a comparison, over the inputs both sides ran."""

    count: int
    succeeded: int
    errors: dict[str, int]
    """Failures by ``error_type``."""
    latency_ms: dict[str, float]
    """``p50``, ``p95``, ``p99`` of the step's attempt."""
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    cost_per_request_usd: Decimal
    projected_month_usd: Decimal
    """Cost per request times the step's live volume over 30 days."""


@dataclass(frozen=True)
class Example:
    """One input whose outputs differ, side by side."""

    request_id: str
    score: float
    baseline: str | None
    candidate: str | None


@dataclass(frozen=True)
class Comparison:
    replay_id: str
    pipeline: str
    step: str
    variant: str
    baseline: Side
    candidate: Side
    compared: int
    """Inputs where both sides produced an output (agreement is over these)."""
    exact_match_rate: float
    scorer: str
    mean_score: float
    most_different: list[Example] = field(default_factory=list)
    missing_baseline: int = 0
    """Replayed inputs with no live trace event (expired, or the sink has not caught up)."""


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p95/p99 (0 for no values).

    >>> percentiles([1.0, 2.0, 3.0, 4.0])
    {'p50': 2.0, 'p95': 4.0, 'p99': 4.0}
    """
    ordered = sorted(values)
    out = {}
    for q in (50, 95, 99):
        if not ordered:
            out[f"p{q}"] = 0.0
            continue
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q}"] = round(ordered[rank - 1], 3)
    return out


def _side(
    rows: Iterable[tuple[str, str | None, float, int, int, Decimal]], monthly_volume: Decimal
) -> Side:
    rows = list(rows)
    errors = Counter(e or "unknown" for status, e, *_ in rows if status != "SUCCESS")
    cost = sum((r[5] for r in rows), Decimal(0))
    per_request = cost / len(rows) if rows else Decimal(0)
    return Side(
        count=len(rows),
        succeeded=sum(r[0] == "SUCCESS" for r in rows),
        errors=dict(errors.most_common()),
        latency_ms=percentiles([r[2] for r in rows]),
        input_tokens=sum(r[3] for r in rows),
        output_tokens=sum(r[4] for r in rows),
        cost_usd=cost,
        cost_per_request_usd=per_request,
        projected_month_usd=(per_request * monthly_volume).quantize(Decimal("0.01")),
    )


async def compare(
    plan: ReplayPlan,
    outcomes: Sequence[ReplayOutcome],
    live: Mapping[str, LiveAttempt],
    *,
    scorer: Scorer = exact_match,
    examples: int = 5,
) -> Comparison:
    """Baseline against candidate over the replayed inputs that have a live attempt."""
    paired = [(o, live[o.request_id]) for o in outcomes if o.request_id in live]
    window_ms = max(1, (plan.until_ms or plan.created_at) - plan.since_ms)
    total = sum(r.stop - r.start for r in plan.ranges)
    monthly = Decimal(total) * MONTH_MS / window_ms
    baseline = _side(
        (
            (b.status, b.error_type, b.duration_ms, b.input_tokens, b.output_tokens, b.cost_usd)
            for _, b in paired
        ),
        monthly,
    )
    candidate = _side(
        ((o.status, o.error_type, o.duration_ms, *total_usage(o.calls)) for o, _ in paired),
        monthly,
    )
    both = [
        (o, b)
        for o, b in paired
        if o.status == "SUCCESS" and b.status == "SUCCESS" and b.output is not None
    ]
    scores: list[tuple[float, ReplayOutcome, LiveAttempt]] = []
    for o, b in both:
        value = scorer(b.output or "", o.output or "")
        if inspect.isawaitable(value):
            value = await value
        scores.append((float(value), o, b))
    exact = sum(o.output == b.output for o, b in both)
    differing = sorted((s for s in scores if s[1].output != s[2].output), key=lambda s: s[0])
    return Comparison(
        replay_id=plan.replay_id,
        pipeline=plan.pipeline,
        step=plan.step,
        variant=plan.label,
        baseline=baseline,
        candidate=candidate,
        compared=len(both),
        exact_match_rate=exact / len(both) if both else 0.0,
        scorer=getattr(scorer, "__name__", type(scorer).__name__),
        mean_score=sum(s[0] for s in scores) / len(scores) if scores else 0.0,
        most_different=[
            Example(o.request_id, round(score, 4), b.output, o.output)
            for score, o, b in differing[:examples]
        ],
        missing_baseline=len(outcomes) - len(paired),
    )
