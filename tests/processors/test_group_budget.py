"""A budget shared by a group: two real worker processes spend one $1.00 between them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests._group_workers import group_workers
from weir.streams import WeirClient

pytestmark = pytest.mark.kafka

REQUESTS = 120


async def test_two_worker_processes_stop_within_one_request_of_a_one_dollar_budget(
    kafka, pipeline_name, servers, repo_root, tmp_path
):
    server = await servers("pricey")
    # Slow calls, so each worker has many in flight when the limit comes near: without
    # group-wide reservations each worker would start calls the other's spend leaves no
    # room for.
    server.behaviour.latency_s = 0.3
    async with (
        group_workers(
            kafka,
            "tests._budget_pipeline:pipeline",
            pipeline_name,
            count=2,
            repo_root=repo_root,
            logs=tmp_path,
            WEIR_TEST_MODEL_URL=server.url,
        ),
        WeirClient(kafka) as client,
    ):
        # The same text each time: every call costs the same.
        ids = await client.submit_many(pipeline_name, [{"text": "the same question"}] * REQUESTS)
        results = await client.wait_for(pipeline_name, ids, timeout=300)
    served = [r for r in results.values() if r.status == "SUCCESS"]
    failed = [r for r in results.values() if r.status == "FAILURE"]
    assert len(results) == REQUESTS
    assert {r.error_type for r in failed} == {"budget_exceeded"}, {
        (r.error_type, r.error_message) for r in failed
    }
    costs = {c.cost_usd for r in served for c in r.model_calls() if c.status == "SUCCESS"}
    [one_request] = costs
    # Spend counted at the endpoint: every chat call it answered, at the one price.
    spend = server.calls["chat"] * one_request
    assert Decimal("1.00") <= spend < Decimal("1.00") + one_request, (spend, one_request)
    assert len(served) == server.calls["chat"]
    # Both workers spent: the budget was shared, not used up by one of them.
    assert len({r.value for r in served}) == 2
