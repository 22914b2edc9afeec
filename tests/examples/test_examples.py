"""The two example pipelines: their logic in-process, and the support pipeline on the broker."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from examples.customer_support import pipeline as customer_support
from weir.core.config import load_settings
from weir.demo import SAMPLE_MESSAGES
from weir.demo.pipeline import pipeline as intent_support
from weir.processors import ModelServices
from weir.streams import Escalate, WeirClient, Worker, run_local


def test_customer_support_v3_joins_context_and_history() -> None:
    answer, path = asyncio.run(run_local(customer_support, {"user_id": "alice_789"}))
    assert path == ["fetch_user_messages", "embed_messages", "query_vector_db", "generate_response"]
    assert answer["answer"].startswith("Based on case-")
    assert answer["cited_case"] in answer["answer"]


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ("What is my account balance?", "balance_lookup"),
        ("The ATM withdrawal failed but my account was debited", "deliver"),
        ("I was charged twice for the same purchase, I want a refund", "escalate_to_human"),
    ],
)
def test_intent_support_takes_one_path_per_intent(text: str, end: str) -> None:
    async def run() -> tuple[dict[str, Any], list[str]]:
        # Its steps call models: outside a worker, the calls use these services.
        async with ModelServices(load_settings()):
            return await run_local(intent_support, {"customer_id": "c-2", "text": text})

    answer, path = asyncio.run(run())
    assert path[-1] == end
    if end == "escalate_to_human":
        assert isinstance(answer, Escalate)  # run_local returns it; a worker sends it to review
        assert any(text in line for line in answer.transcript)  # the full context
    if end == "balance_lookup":
        assert "draft_reply" not in path  # no LLM on the balance path


@pytest.mark.kafka
async def test_intent_support_on_the_broker_reports_cost_per_request(kafka):
    payloads = [{"customer_id": c, "text": t} for c, t in SAMPLE_MESSAGES]
    settings = kafka.model_copy(update={"review_deadline_s": 2.0, "review_check_interval_s": 0.2})
    services = ModelServices(settings)
    async with (
        Worker(intent_support, settings, services=services),
        WeirClient(settings) as client,
    ):
        ids = await client.submit_many(intent_support.name, payloads)
        results = await client.wait_for(intent_support.name, ids, timeout=90)
    for rid, payload in zip(ids, payloads, strict=True):
        result = results[rid]
        async with services.bound():
            expected, path = await run_local(intent_support, payload)
        if isinstance(expected, Escalate):  # nobody answered: the fallback, after the deadline
            expected = {
                "answer": expected.fallback,
                "human_answered": False,
                "answered_by": None,
                "waited_ms": result.value["waited_ms"],
                "reason": expected.reason,
                "answer_id": result.value["answer_id"],
                "timed_out": True,
            }
            assert result.value["waited_ms"] >= 2000
        assert result.status == "SUCCESS" and result.value == expected and result.path == path
        endpoints = [c["endpoint"] for c in result.calls]
        if "draft_reply" in path:  # classifier, embedder and the priced LLM were called
            assert endpoints == ["intent-classifier", "case-embedder", "gpt-4o-mini"]
            assert result.cost_usd > Decimal(0)
            assert result.input_tokens > 0 and result.output_tokens > 0
        else:
            assert endpoints == ["intent-classifier"] and result.cost_usd == Decimal(0)
