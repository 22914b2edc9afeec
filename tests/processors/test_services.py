"""Worker-owned model services: two workers in one process share no settings, breakers or tasks."""

from __future__ import annotations

import asyncio
import contextvars
from decimal import Decimal

import pytest

from tests._kafka import read_results
from weir.core.config import ModelPrice
from weir.core.errors import ConfigError
from weir.processors import (
    BreakerPolicy,
    Budget,
    ModelEndpoint,
    ModelServices,
    OpenAICompatible,
    Router,
)
from weir.streams import Pipeline, RetryPolicy, WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

ENDPOINT = "shared-llm"  # the same name in both pipelines: nothing may be shared through it
MODEL = "m-services"


def pipeline(name: str, url: str, *, with_budget: bool) -> Pipeline:
    llm = ModelEndpoint(
        ENDPOINT,
        provider=OpenAICompatible(url),
        model=MODEL,
        breaker=BreakerPolicy(failure_threshold=2, window_s=600, cooldown_s=600),
    )
    budget = Budget(f"{name}-budget", limit_usd="100") if with_budget else None
    router = Router(f"{name}-router", default=llm, budget=budget)
    p = Pipeline(name, retry=RetryPolicy(maximum_attempts=1))

    @p.step()
    async def answer(text: str) -> str:
        result = await router.chat([{"role": "user", "content": text}], max_tokens=8)
        return str(result.cost_usd)

    return p


async def test_two_workers_in_one_process_see_their_own_settings_and_breakers(
    kafka, pipeline_name, servers
):
    down, up = await servers("down"), await servers("up")
    down.behaviour.fail_rate = 1.0
    down.behaviour.fail_statuses = (503,)
    settings_a = kafka.model_copy(
        update={"worker_id": "worker-a", "model_prices": {MODEL: ModelPrice(input_per_1m=1)}}
    )
    settings_b = kafka.model_copy(
        update={"worker_id": "worker-b", "model_prices": {MODEL: ModelPrice(input_per_1m=2)}}
    )
    p_a = pipeline(f"{pipeline_name}-a", down.url, with_budget=False)
    p_b = pipeline(f"{pipeline_name}-b", up.url, with_budget=True)
    services_a, services_b = ModelServices(settings_a), ModelServices(settings_b)

    async with (
        Worker(p_a, settings_a, services=services_a),
        Worker(p_b, settings_b, services=services_b),
        WeirClient(kafka) as client,
    ):
        assert services_a.started and services_b.started
        ids_a = await client.submit_many(p_a.name, [{"text": f"a{i}"} for i in range(4)])
        ids_b = await client.submit_many(p_b.name, [{"text": f"b{i}"} for i in range(4)])
        results_a, _ = await read_results(kafka, PipelineTopics(p_a.name).results, 4)
        results_b, _ = await read_results(kafka, PipelineTopics(p_b.name).results, 4)
        ledger = services_b.existing_ledger
        watchers = services_a.watcher(), services_b.watcher()

        # A's endpoint failed until A's breaker opened; B's endpoint of the same name,
        # with its own breaker, kept answering.
        assert set(results_a) == set(ids_a)
        assert {r.status for r in results_a.values()} == {"FAILURE"}
        assert {r.error_type for r in results_a.values()} <= {"model_unavailable", "circuit_open"}
        assert services_a.circuit_states()[ENDPOINT]["opened"] >= 1
        assert services_b.circuit_states()[ENDPOINT]["opened"] == 0
        assert services_b.circuit_states()[ENDPOINT]["state"] == "closed"
        # Each worker priced with its own settings' table (input 2 USD per 1M tokens in B).
        assert set(results_b) == set(ids_b)
        for result in results_b.values():
            assert result.status == "SUCCESS"
            call = next(c for c in result.model_calls() if c.status == "SUCCESS")
            assert Decimal(result.value) == Decimal(call.input_tokens * 2) / 1_000_000
        assert services_a.endpoint_states()[ENDPOINT]["price_per_1m"]["input"] == "1"
        assert services_b.endpoint_states()[ENDPOINT]["price_per_1m"]["input"] == "2"
        assert set(services_a.routers) == {f"{p_a.name}-router"}
        assert set(services_b.routers) == {f"{p_b.name}-router"}
        assert ledger is not None and ledger.running
        assert services_a.existing_ledger is None  # A has no budget: no ledger, no consumer
        assert all(w.running for w in watchers)

    # Worker.stop() stopped each worker's services: the watchers and the ledger are closed.
    assert services_a.stopped and services_b.stopped
    assert not ledger.running
    assert not any(w.running for w in watchers)


async def test_a_model_call_without_services_says_how_to_provide_them():
    llm = ModelEndpoint("nowhere", provider=OpenAICompatible("http://127.0.0.1:1/v1"))
    # Outside any worker and any `async with ModelServices(...)` (a fresh context: not even
    # this test's), the call is refused before anything is sent, saying how to fix it.
    call = llm.chat([{"role": "user", "content": "hi"}])
    task = asyncio.get_running_loop().create_task(call, context=contextvars.Context())
    with pytest.raises(ConfigError, match=r"services=ModelServices\(settings\)"):
        await task
