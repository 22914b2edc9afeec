"""Failing model endpoints in running pipelines: retries, fallbacks, breakers, no leaked key."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests._kafka import read_results, read_topic
from weir.processors import (
    BreakerPolicy,
    ModelEndpoint,
    ModelServices,
    OpenAICompatible,
    Price,
)
from weir.schemas.messages import DeadLetter, TraceEvent
from weir.streams import Pipeline, RetryPolicy, WeirClient, Worker
from weir.streams.tracing import Tracing
from weir.topics.names import TRACES_TOPIC, PipelineTopics
from weir.web import WebServer

pytestmark = pytest.mark.kafka

PRICE = Price.per_million(input="0.15", output="0.60")
MODEL_ERRORS = {
    "model_unavailable",
    "rate_limited",
    "model_timeout",
    "circuit_open",
}


async def test_half_the_calls_failing_still_answers_999_in_1000(kafka, pipeline_name, servers):
    flaky, steady = await servers("flaky"), await servers("steady")
    flaky.behaviour.fail_rate = 0.45
    flaky.behaviour.hang_rate = 0.05
    flaky.behaviour.hang_s = 5.0
    steady.behaviour.fail_rate = 0.05  # the fallback is not perfect either
    secondary = ModelEndpoint(
        f"{pipeline_name}-steady",
        provider=OpenAICompatible(steady.url),
        price=PRICE,
        # Generous: the fallback never hangs, and on a starved CPU a tight deadline here
        # fails attempts for the machine's sake, not the endpoints'.
        timeout_s=20.0,
        breaker=None,
    )
    primary = ModelEndpoint(
        f"{pipeline_name}-flaky",
        provider=OpenAICompatible(flaky.url),
        price=PRICE,
        timeout_s=0.5,
        breaker=BreakerPolicy(failure_threshold=20, window_s=2.0, cooldown_s=0.5),
        fallbacks=[secondary],
    )
    p = Pipeline(pipeline_name)

    @p.step(
        retry=RetryPolicy(maximum_attempts=4, initial_interval=0.2, backoff_coefficient=2.0),
        timeout=60.0,
    )
    async def answer(text: str) -> str:
        return (await primary.chat([{"role": "user", "content": text}])).text

    n = 2000
    kafka = kafka.model_copy(update={"max_in_flight": 200})
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": f"q{i}"} for i in range(n)])
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, n, timeout=240)
        dead = await read_topic(kafka, PipelineTopics(p.name).dead_letter("answer"))
    assert set(results) == set(ids), "a request is missing"
    assert max(counts.values()) == 1
    ok = [r for r in results.values() if r.status == "SUCCESS"]
    failed = [r for r in results.values() if r.status == "FAILURE"]
    assert len(ok) >= 0.999 * n, f"only {len(ok)} of {n} succeeded"
    # Every failure is in the dead-letter topic, with the model error that ended it.
    letters = {DeadLetter.from_message(d.key, d.value, d.headers).request_id: d for d in dead}
    assert {r.request_id for r in failed} == set(letters)
    for r in failed:
        header = DeadLetter.from_message(
            letters[r.request_id].key, letters[r.request_id].value, letters[r.request_id].headers
        )
        assert header.error_type == r.error_type and r.error_type in MODEL_ERRORS
        assert header.attempt == 4
    # The fallback answered in the same attempt (fallback_from names the primary).
    answered_by = collections.Counter(
        c.endpoint for r in ok for c in r.model_calls() if c.status == "SUCCESS"
    )
    assert answered_by[secondary.name] > 0 and answered_by[primary.name] > 0
    fallback_calls = [c for r in ok for c in r.model_calls() if c.fallback_from]
    assert {c.fallback_from for c in fallback_calls} == {primary.name}
    assert flaky.calls["failed"] > 0 and flaky.calls["hung"] > 0


async def test_an_endpoint_outage_opens_its_breaker_and_the_fallback_takes_over(
    kafka, pipeline_name, servers
):
    """The seed's embedding outage: the primary goes down, users see no failure."""
    primary_server, backup_server = await servers("emb-primary"), await servers("emb-backup")
    backup = ModelEndpoint(
        f"{pipeline_name}-backup", provider=OpenAICompatible(backup_server.url), price=PRICE
    )
    primary = ModelEndpoint(
        f"{pipeline_name}-primary",
        provider=OpenAICompatible(primary_server.url),
        price=PRICE,
        breaker=BreakerPolicy(failure_threshold=5, window_s=30, cooldown_s=1.0),
        fallbacks=[backup],
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def embed(text: str) -> str:
        return (await primary.embed([text])).endpoint

    settings = kafka.model_copy(update={"web_port": 0})
    services = ModelServices(settings)
    worker = Worker(p, settings, services=services)
    async with worker, WeirClient(settings) as client, WebServer(settings, worker) as web:

        async def batch(n: int, tag: str) -> collections.Counter[str]:
            ids = await client.submit_many(p.name, [{"text": f"{tag}{i}"} for i in range(n)])
            done = await client.wait_for(p.name, ids, timeout=60)
            assert all(r.status == "SUCCESS" for r in done.values())  # no user impact
            return collections.Counter(r.value for r in done.values())

        before = await batch(50, "before")
        assert before == {primary.name: 50}
        primary_server.behaviour.fail_rate = 1.0  # the outage starts
        primary_server.behaviour.fail_statuses = (503,)
        # The first batch is in flight at once: it all reaches the failing primary
        # (and falls back) before the breaker has seen its fifth failure.
        outage = await batch(50, "outage")
        # Tripped: open, or already half-open when answering the batch took longer than the
        # 1 s cooldown (half-open is reached only from open).
        assert services.circuit_states()[primary.name]["state"] in ("open", "half_open")
        calls_once_open = primary_server.total
        for _ in range(5):  # ~2.5 seconds more of traffic
            outage += await batch(50, "outage")
            await asyncio.sleep(0.3)
        reached = primary_server.total - calls_once_open
        assert services.circuit_states()[primary.name]["state"] in ("open", "half_open")
        async with aiohttp.ClientSession() as http, http.get(f"{web.url}/health") as response:
            health = await response.json()
        assert health["status"] == "degraded"
        assert health["circuits"][primary.name]["state"] in ("open", "half_open")
        primary_server.behaviour.fail_rate = 0.0  # the outage ends
        await asyncio.sleep(1.2)
        probe = await batch(1, "probe")  # half-open: one call probes, and it succeeds
        after = await batch(50, "after")
    assert outage == {backup.name: 300}
    # Counted at the server: once open, only about one probe per cooldown second reached
    # the primary; the other ~250 calls never left the worker.
    assert 1 <= reached <= 5, reached
    assert primary.breaker is not None and primary.breaker.state == "closed"
    assert probe == {primary.name: 1} and after == {primary.name: 50}  # back on the primary


async def test_no_secret_reaches_logs_traces_spans_or_dead_letters(
    kafka, pipeline_name, servers, monkeypatch, caplog
):
    canary = "sk-canary-d41d8cd98f00b204e980"
    monkeypatch.setenv("WEIR_TEST_SECRET_KEY", canary)
    server = await servers("leaky")
    server.behaviour.echo_key_in_errors = True  # like an API that quotes the refused key
    server.behaviour.fail_rate = 0.5
    server.behaviour.fail_statuses = (401, 500, 429)
    llm = ModelEndpoint(
        f"{pipeline_name}-leaky",
        provider=OpenAICompatible(server.url, api_key="env:WEIR_TEST_SECRET_KEY"),
        price=PRICE,
        breaker=None,
    )
    p = Pipeline(pipeline_name)

    @p.step(retry=RetryPolicy(maximum_attempts=2, initial_interval=0.1), log_io=True)
    async def answer(text: str) -> str:
        return (await llm.chat([{"role": "user", "content": text}])).text

    spans = InMemorySpanExporter()
    tracing = Tracing(kafka, processors=[SimpleSpanProcessor(spans)])
    caplog.set_level(logging.DEBUG)
    n = 100
    async with (
        Worker(p, kafka, tracing=tracing, services=ModelServices(kafka)),
        WeirClient(kafka) as client,
    ):
        ids = await client.submit_many(p.name, [{"text": f"q{i}"} for i in range(n)])
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, n)
        dead = await read_topic(kafka, PipelineTopics(p.name).dead_letter("answer"))
    assert set(results) == set(ids)
    assert server.api_keys and set(server.api_keys) == {canary}  # the key was used
    assert dead, "some requests should have failed for good (401 is not retried)"
    traces = [
        r
        for r in await read_topic(kafka, TRACES_TOPIC, idle_s=1.0)
        if r.key is not None and r.key.decode() in set(ids)
    ]
    assert len(traces) >= n
    haystacks: dict[str, list[Any]] = {
        "logs": [caplog.text],
        "trace events": [repr(TraceEvent.decode(t.value)) for t in traces],
        "dead letters": [(d.key, d.value, d.headers) for d in dead],
        "results": [r.model_dump_json() for r in results.values()],
        "spans": [
            (s.name, dict(s.attributes or {}), s.status.description, s.events)
            for s in spans.get_finished_spans()
        ],
    }
    assert "failed on purpose" in str(haystacks["dead letters"])  # the echoing bodies are there
    for where, items in haystacks.items():
        text = repr(items)
        assert canary not in text, f"the secret leaked into {where}"
        assert canary.encode().hex() not in text
