"""How escalations to a person are going: share escalated, time to answer, backlog.

Read from the pipeline's review topic (``weir.streams.review``), which holds every
escalation and what became of it; ``weir stats`` and the dashboard show them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from weir.core.config import WeirSettings
from weir.core.errors import UnknownPipelineError
from weir.streams.review import ReviewBook, read_reviews

__all__ = ["ReviewFigures", "figures_of", "review_figures"]


@dataclass(frozen=True, slots=True)
class ReviewFigures:
    """One pipeline's reviews: those escalated in the window, and the backlog now."""

    pipeline: str
    escalated: int
    """Reviews opened in the window."""
    answered: int
    """Of those, answered by a person."""
    timed_out: int
    """Of those, ended with the fallback at their deadline."""
    answer_p50_ms: float | None
    """Time from escalation to a person's answer (answered ones), median."""
    answer_p95_ms: float | None
    backlog: int
    """Reviews open now, whenever escalated."""
    oldest_open_ms: int | None
    """How long the oldest open review has waited."""

    def share_of(self, requests: int) -> float | None:
        """The escalated share of ``requests`` (the pipeline's in the same window)."""
        return None if requests <= 0 else min(1.0, self.escalated / requests)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(ordered: list[int], q: float) -> float | None:
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))])


def figures_of(
    book: ReviewBook, pipeline: str, *, since_ms: int, now_ms: int | None = None
) -> ReviewFigures:
    """The figures of the reviews in ``book`` (escalated since ``since_ms``)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    recent = [r for r in book.reviews.values() if r.escalated_at >= since_ms]
    waits = sorted(
        r.closed_at - r.escalated_at
        for r in recent
        if r.status == "answered" and r.closed_at is not None
    )
    open_ = book.open()
    return ReviewFigures(
        pipeline=pipeline,
        escalated=len(recent),
        answered=sum(r.status == "answered" for r in recent),
        timed_out=sum(r.status == "expired" for r in recent),
        answer_p50_ms=_quantile(waits, 0.5),
        answer_p95_ms=_quantile(waits, 0.95),
        backlog=len(open_),
        oldest_open_ms=max((now - r.escalated_at for r in open_), default=None),
    )


async def review_figures(
    settings: WeirSettings, pipelines: list[str], *, since_ms: int
) -> list[ReviewFigures]:
    """Figures of each of ``pipelines`` that has a review topic (the others are left out)."""
    out = []
    for pipeline in pipelines:
        try:
            book = await read_reviews(settings, pipeline)
        except UnknownPipelineError:
            continue
        out.append(figures_of(book, pipeline, since_ms=since_ms))
    return out
