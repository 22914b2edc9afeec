"""The comparison itself: sides, agreement and scorers, against a real local embeddings server."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from tests._model_servers import vector
from weir.core.config import load_settings
from weir.core.errors import ConfigError
from weir.processors import ModelEndpoint, OpenAICompatible
from weir.processors.services import ModelServices
from weir.replays.compare import EmbeddingScorer, LiveAttempt, compare, load_scorer
from weir.replays.recording import PartitionRange
from weir.replays.records import ReplayOutcome, ReplayPlan
from weir.schemas.messages import ModelCall

HOUR_MS = 3600 * 1000


def _plan() -> ReplayPlan:
    return ReplayPlan(
        replay_id="rs-test",
        pipeline="p",
        step="s",
        since_ms=0,
        until_ms=HOUR_MS,
        sample=1.0,
        endpoint="cand",
        variant=None,
        budget_usd=None,
        ranges=(PartitionRange(0, 0, 40),),  # 40 requests an hour live
    )


def _outcome(rid: str, output: str | None, cost: str, *, error: str | None = None) -> ReplayOutcome:
    call = ModelCall(
        step="s",
        attempt=1,
        endpoint="cand",
        provider="openai",
        model="m",
        operation="chat",
        status="SUCCESS",
        started_at=0,
        duration_ms=1.0,
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal(cost),
    )
    return ReplayOutcome(
        replay_id="rs-test",
        variant="endpoint:cand",
        request_id=rid,
        partition=0,
        offset=0,
        status="FAILURE" if error else "SUCCESS",
        started_at=0,
        duration_ms=float(len(rid)),
        output=output,
        error_type=error,
        calls=(call,),
    )


def _live(rid: str, output: str, cost: str) -> LiveAttempt:
    return LiveAttempt(rid, "SUCCESS", None, 100.0, 12, 6, Decimal(cost), output)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_embedding_scorer_ranks_the_most_different_outputs_first(servers):
    server = await servers("embeddings")
    scorer = EmbeddingScorer(ModelEndpoint("cmp-emb", provider=OpenAICompatible(server.url)))
    outcomes = [
        _outcome("a", '"same"', "0.002"),
        _outcome("b", '"other b"', "0.002"),
        _outcome("c", '"other c"', "0.002"),
        _outcome("dd", None, "0.001", error="model_timeout"),
        _outcome("only-replayed", '"x"', "0.002"),
    ]
    live = {
        "a": _live("a", '"same"', "0.001"),
        "b": _live("b", '"live b"', "0.001"),
        "c": _live("c", '"live c"', "0.001"),
        "dd": _live("dd", '"live d"', "0.001"),
    }
    async with ModelServices(load_settings()):
        c = await compare(_plan(), outcomes, live, scorer=scorer, examples=1)
    assert (c.baseline.count, c.candidate.count, c.missing_baseline) == (4, 4, 1)
    assert c.candidate.errors == {"model_timeout": 1} and c.baseline.errors == {}
    assert c.compared == 3 and c.exact_match_rate == pytest.approx(1 / 3)
    scores = {
        rid: _cosine(vector(live[rid].output or ""), vector(out))
        for rid, out in (("a", '"same"'), ("b", '"other b"'), ("c", '"other c"'))
    }
    assert c.mean_score == pytest.approx(sum(scores.values()) / 3)
    lowest = min(("b", "c"), key=scores.__getitem__)
    assert [e.request_id for e in c.most_different] == [lowest]
    assert server.calls["embeddings"] == 3
    assert c.candidate.cost_usd == Decimal("0.007") and c.baseline.cost_usd == Decimal("0.004")
    # 40 requests an hour: 28,800 a month.
    assert c.candidate.projected_month_usd == Decimal("0.00175") * 28800
    assert c.baseline.projected_month_usd == Decimal("0.001") * 28800
    assert c.baseline.latency_ms == {"p50": 100.0, "p95": 100.0, "p99": 100.0}
    assert c.candidate.latency_ms["p99"] == 2.0


def test_a_scorer_is_exact_an_embedding_endpoint_or_a_function():
    assert load_scorer("exact")('"a"', '"a"') == 1.0
    assert load_scorer("math:dist") is math.dist
    with pytest.raises(ConfigError, match="no such endpoint"):
        load_scorer("embedding:not-defined-anywhere")
    with pytest.raises(ConfigError, match="exact, embedding"):
        load_scorer("nonsense")
