"""The model layer inside running pipelines: real broker, real worker, real local HTTP servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests._kafka import read_results
from tests._model_servers import input_tokens
from tests.conftest import worker_env
from weir.core.errors import StreamAbortedError
from weir.processors import (
    Anthropic,
    ModelEndpoint,
    ModelServices,
    OpenAICompatible,
    Price,
    format_usd,
)
from weir.schemas.messages import ModelCall
from weir.streams import NO_RETRY, Pipeline, RetryPolicy, StepContext, WeirClient, Worker
from weir.topics.names import PipelineTopics
from weir.web import WebServer

pytestmark = pytest.mark.kafka

CHAT_PRICE = Price.per_million(input="0.15", output="0.60")
EMBED_PRICE = Price.per_million(input="0.02")
CLAUDE_PRICE = Price.per_million(input="0.80", output="4.00")


def _words(text: str) -> int:
    return len(text.split())


async def test_chat_embeddings_and_streams_cost_exactly_what_the_servers_report(
    kafka, pipeline_name, servers, repo_root
):
    oa, an = await servers("openai"), await servers("anthropic")
    embedder = ModelEndpoint(
        f"{pipeline_name}-emb", provider=OpenAICompatible(oa.url), model="emb", price=EMBED_PRICE
    )
    chat = ModelEndpoint(
        f"{pipeline_name}-chat", provider=OpenAICompatible(oa.url), model="mini", price=CHAT_PRICE
    )
    claude = ModelEndpoint(
        f"{pipeline_name}-claude", provider=Anthropic(an.url), model="haiku", price=CLAUDE_PRICE
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def embed(text: str) -> int:
        return len((await embedder.embed([text, text.upper()])).vectors)

    @p.step()
    async def draft(text: str) -> str:
        return (await chat.chat([{"role": "user", "content": text}])).text

    @p.step(depends_on=[draft])
    async def polish(draft: str) -> str:
        messages = [{"role": "system", "content": "polish"}, {"role": "user", "content": draft}]
        openai_text = "".join([e.text async for e in chat.stream_chat(messages)])
        claude_text = (await claude.stream_chat(messages).collect()).text
        return f"{openai_text} | {claude_text}"

    @p.step(depends_on=[embed, polish])
    def answer(embed: int, polish: str) -> dict[str, Any]:
        return {"vectors": embed, "text": polish}

    texts = [f"question number {i} about my card" for i in range(30)]
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": t} for t in texts])
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    assert len(results) == 30 and max(counts.values()) == 1
    for rid, text in zip(ids, texts, strict=True):
        result = results[rid]
        assert result.status == "SUCCESS", result
        # What the servers reported, times the configured prices, by hand:
        draft_text = f"you said {text}"
        polished = f"you said {draft_text}"
        messages = [{"content": "polish"}, {"content": draft_text}]
        emb_in = _words(text) * 2
        chat_in, chat_out = input_tokens([{"content": text}]), _words(draft_text)
        stream_in, stream_out = input_tokens(messages), _words(polished)
        claude_in = input_tokens([{"content": draft_text}], "polish")
        expected_cost = (
            EMBED_PRICE.cost(emb_in, 0)
            + CHAT_PRICE.cost(chat_in, chat_out)
            + CHAT_PRICE.cost(stream_in, stream_out)
            + CLAUDE_PRICE.cost(claude_in, stream_out)
        )
        assert result.value == {"vectors": 2, "text": f"{polished} | {polished}"}
        assert result.input_tokens == emb_in + chat_in + stream_in + claude_in
        assert result.output_tokens == chat_out + 2 * stream_out
        assert result.cost_usd == expected_cost
        calls = result.model_calls()
        assert sorted((c.step, c.provider, c.operation, c.streamed) for c in calls) == [
            ("draft", "openai", "chat", False),
            ("embed", "openai", "embeddings", False),
            ("polish", "anthropic", "chat", True),
            ("polish", "openai", "chat", True),
        ]
        assert {c.usage_source for c in calls} == {"provider"}
        assert all(c.ttft_ms is not None for c in calls if c.streamed)
    assert oa.calls["embeddings"] == 30 and oa.calls["chat"] == 30 and oa.calls["stream"] == 30
    assert an.calls["messages_stream"] == 30
    # `weir cost` tells the same from the trace topic.
    rid = ids[0]
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", "cost", rid],
        cwd=repo_root,
        env=worker_env(kafka),
        capture_output=True,
        text=True,
        check=True,
    )
    first = shown.stdout.splitlines()[0]
    r = results[rid]
    assert first.startswith(
        f"request {rid} used {r.input_tokens:,} input tokens and {r.output_tokens:,} output"
        " tokens, routed through "
    ), first
    assert first.endswith(f", cost {format_usd(r.cost_usd)}"), first
    assert all(model in first for model in ("emb", "mini", "haiku"))


async def test_stream_cut_mid_answer_restarts_and_the_client_sees_it(kafka, pipeline_name, servers):
    reply = "the refund of forty two dollars was issued to your card today"
    primary, backup = await servers("cut"), await servers("backup")
    for s in (primary, backup):
        s.behaviour.reply = lambda text: reply
        s.behaviour.chunk_delay_s = 0.005
    primary.behaviour.cut_after = 4
    llm = ModelEndpoint(
        f"{pipeline_name}-primary",
        provider=OpenAICompatible(primary.url),
        price=CHAT_PRICE,
        stream_retries=1,
        breaker=None,
        fallbacks=[
            ModelEndpoint(
                f"{pipeline_name}-backup", provider=OpenAICompatible(backup.url), price=CHAT_PRICE
            )
        ],
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def answer(text: str) -> str:
        return (await llm.stream_chat([{"role": "user", "content": text}]).collect()).text

    settings = kafka.model_copy(update={"web_port": 0})
    async with (
        Worker(p, settings, services=ModelServices(settings)) as worker,
        WeirClient(settings) as client,
    ):
        async with WebServer(settings, worker) as web:
            rid = "cut-" + pipeline_name
            async with client.stream(rid, pipeline=p.name, idle_timeout=30) as chunks:
                await client.submit(p.name, {"text": "refund?"}, request_id=rid)
                seen = [chunk async for chunk in chunks]
                final_text = chunks.text
            # The same stream again, as Server-Sent Events from the worker's HTTP server.
            url = f"{web.url}/streams/{p.name}/{rid}?idle_timeout=10"
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                body = await response.text()
        result = (await client.wait_for(p.name, [rid], timeout=30))[rid]
    kinds = [c.kind for c in seen]
    assert kinds.count("restart") == 2 and kinds[-1] == "done"
    assert final_text == reply == result.value
    last_restart = max(i for i, k in enumerate(kinds) if k == "restart")
    assert "".join(c.text for c in seen[last_restart + 1 :]) == reply
    assert seen[-1].endpoint == f"{pipeline_name}-backup"
    assert {c.error_type for c in seen if c.kind == "restart"} == {"stream_interrupted"}
    events = [
        line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event:")
    ]
    assert events.count("restart") == 2 and events[-1] == "done"
    # Usage is counted for every attempt, the broken ones included.
    calls = result.model_calls()
    assert [(c.endpoint.rsplit("-", 1)[-1], c.status) for c in calls] == [
        ("primary", "FAILURE"),
        ("primary", "FAILURE"),
        ("backup", "SUCCESS"),
    ]
    assert all(c.output_tokens > 0 and c.cost_usd > 0 for c in calls)
    assert result.cost_usd == sum((c.cost_usd for c in calls), Decimal(0))
    assert primary.calls["cut"] == 2 and backup.calls["stream"] == 1


def test_trace_event_calls_roundtrip_keeps_exact_cost():
    call = ModelCall(
        step="s",
        attempt=2,
        endpoint="e",
        provider="anthropic",
        model="m",
        operation="chat",
        status="FAILURE",
        started_at=5,
        duration_ms=1.5,
        cost_usd=Decimal("0.00000123"),
        error_type="stream_interrupted",
        streamed=True,
        usage_source="estimate",
    )
    assert json.loads(json.dumps(call.to_record()))["cost_usd"] == "0.00000123"


async def test_a_dead_lettered_stream_ends_the_clients_stream_with_an_error(
    kafka, pipeline_name, servers
):
    slow = await servers("slow")
    slow.behaviour.reply = lambda text: " ".join(["word"] * 200)
    slow.behaviour.chunk_delay_s = 0.1
    llm = ModelEndpoint(f"{pipeline_name}-slow", provider=OpenAICompatible(slow.url), breaker=None)
    p = Pipeline(pipeline_name)

    @p.step(timeout=1.0, retry=NO_RETRY)
    async def answer(text: str) -> str:
        return (await llm.stream_chat([{"role": "user", "content": text}]).collect()).text

    settings = kafka.model_copy(update={"web_port": 0})
    async with (
        Worker(p, settings, services=ModelServices(settings)) as worker,
        WeirClient(settings) as client,
    ):
        rid = "dead-" + pipeline_name
        seen = []
        # A minute of idle patience: only the abort can end this stream quickly.
        async with client.stream(rid, pipeline=p.name, idle_timeout=60) as chunks:
            await client.submit(p.name, {"text": "refund?"}, request_id=rid)
            with pytest.raises(StreamAbortedError) as raised:
                async with asyncio.timeout(45):
                    async for chunk in chunks:
                        seen.append(chunk.kind)
        result = (await client.wait_for(p.name, [rid], timeout=30))[rid]
        async with WebServer(settings, worker) as web:  # the same, as Server-Sent Events
            url = f"{web.url}/streams/{p.name}/{rid}?idle_timeout=60"
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                async with asyncio.timeout(45):
                    body = await response.text()
    events = [line.removeprefix("event: ") for line in body.splitlines() if "event:" in line]
    assert events[-1] == "abort" and '"reason": "step_timeout"' in body
    assert result.status == "FAILURE" and result.error_type == "step_timeout"
    assert raised.value.reason == "step_timeout" and raised.value.error_type == "stream_aborted"
    assert seen[0] == "delta" and seen[-1] == "restart"  # the text so far was dropped


async def test_an_aborted_stream_that_is_retried_goes_on_to_done(kafka, pipeline_name, servers):
    slow, fast = await servers("slow"), await servers("fast")
    slow.behaviour.reply = lambda text: " ".join(["word"] * 200)
    slow.behaviour.chunk_delay_s = 0.1
    fast.behaviour.reply = lambda text: "the full answer"
    first = ModelEndpoint(f"{pipeline_name}-1", provider=OpenAICompatible(slow.url), breaker=None)
    then = ModelEndpoint(f"{pipeline_name}-2", provider=OpenAICompatible(fast.url), breaker=None)
    p = Pipeline(pipeline_name)

    @p.step(timeout=1.0, retry=RetryPolicy(maximum_attempts=2, initial_interval=0.2))
    async def answer(text: str, ctx: StepContext) -> str:
        llm = first if ctx.attempt == 1 else then
        return (await llm.stream_chat([{"role": "user", "content": text}]).collect()).text

    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        rid = "retried-" + pipeline_name
        async with client.stream(rid, pipeline=p.name, idle_timeout=30) as chunks:
            await client.submit(p.name, {"text": "refund?"}, request_id=rid)
            seen = [chunk async for chunk in chunks]
            text = chunks.text
    assert seen[-1].kind == "done" and text == "the full answer"
    assert [c.attempt for c in seen if c.kind == "delta"][-1] == 2
