"""A live shadow's record (``weir.<pipeline>.shadow``) as a comparison: primary against candidate.

Each record holds both answers of one shadowed call with their model calls, so
the baseline needs no trace store: it is the primary call as it happened.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from weir.core.config import WeirSettings
from weir.core.errors import ReplayNotFoundError
from weir.replays.compare import LiveAttempt
from weir.replays.recording import PartitionRange, read_since
from weir.replays.records import ReplayOutcome, ReplayPlan
from weir.schemas.messages import ModelCall, now_ms
from weir.topics.names import PipelineTopics

__all__ = ["shadow_comparison_inputs"]


async def shadow_comparison_inputs(
    settings: WeirSettings,
    pipeline: str,
    *,
    since_ms: int,
    router: str | None = None,
) -> tuple[ReplayPlan, list[ReplayOutcome], dict[str, LiveAttempt]]:
    """The shadowed calls of ``pipeline`` since ``since_ms`` as ``compare``'s inputs."""
    outcomes: list[ReplayOutcome] = []
    live: dict[str, LiveAttempt] = {}
    shares: set[float] = set()
    steps: set[str] = set()
    candidates: set[str] = set()
    first = now_ms()
    async for record in _records(settings, PipelineTopics(pipeline).shadow, since_ms):
        if router is not None and record.get("router") != router:
            continue
        primary, shadow = record["primary"], record["shadow"]
        if primary.get("call") is None:
            continue
        rid = record["request_id"]
        p_call = _model_call(primary["call"])
        s_call = _model_call(shadow["call"]) if shadow.get("call") else None
        first = min(first, p_call.started_at)
        shares.add(float(record["share"]))
        steps.add(record["step"])
        if s_call is not None:
            candidates.add(s_call.endpoint)
        live[rid] = LiveAttempt(
            request_id=rid,
            status=p_call.status,
            error_type=p_call.error_type,
            duration_ms=p_call.duration_ms,
            input_tokens=p_call.input_tokens,
            output_tokens=p_call.output_tokens,
            cost_usd=p_call.cost_usd,
            output=json.dumps(primary["output"]),
        )
        failed = shadow.get("error_type") is not None
        outcomes.append(
            ReplayOutcome(
                replay_id=f"shadow:{pipeline}",
                variant=f"shadow:{s_call.endpoint if s_call else '?'}",
                request_id=rid,
                partition=0,
                offset=len(outcomes),
                status="FAILURE" if failed else "SUCCESS",
                started_at=s_call.started_at if s_call else 0,
                duration_ms=s_call.duration_ms if s_call else 0.0,
                output=None if failed else json.dumps(shadow["output"]),
                error_type=shadow.get("error_type"),
                calls=(s_call,) if s_call else (),
            )
        )
    if not outcomes:
        raise ReplayNotFoundError(
            f"no shadowed calls of pipeline {pipeline!r} since then"
            + (f" through router {router!r}" if router else "")
            + ": is a rule's shadow: set, and has traffic reached it?"
        )
    share = min(shares)
    # The share's live volume: what the projection per month scales to.
    volume = round(len(outcomes) / share)
    plan = ReplayPlan(
        replay_id=f"shadow:{pipeline}",
        pipeline=pipeline,
        step=", ".join(sorted(steps)),
        since_ms=max(since_ms, first),
        until_ms=now_ms(),
        sample=share,
        endpoint=", ".join(sorted(candidates)) or "?",
        variant=None,
        budget_usd=None,
        ranges=(PartitionRange(0, 0, volume),),
    )
    return plan, outcomes, live


def _model_call(record: dict[str, Any]) -> ModelCall:
    return ModelCall.from_record({**record, "cost_usd": record.get("cost_usd") or "0"})


async def _records(settings: WeirSettings, topic: str, since_ms: int) -> AsyncIterator[Any]:
    async for value in read_since(settings, topic, since_ms):
        if value is None:
            continue
        try:
            yield json.loads(value)
        except ValueError:
            continue  # not written by a shadow: nothing to compare
