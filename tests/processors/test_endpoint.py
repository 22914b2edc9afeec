"""Model endpoints against real local HTTP servers (no Kafka): wire formats, usage, failures."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests._model_servers import input_tokens, vector
from weir.core.config import load_settings
from weir.core.errors import (
    CircuitOpenError,
    ModelRequestError,
    ModelTimeoutError,
    ModelUnavailableError,
    RateLimitedError,
    SecretError,
    StreamInterruptedError,
)
from weir.processors import (
    Anthropic,
    BreakerPolicy,
    Limits,
    LocalModel,
    ModelEndpoint,
    OpenAICompatible,
    Price,
)
from weir.schemas.messages import ModelCall
from weir.streams.context import AttemptScope, StepContext, enter_scope, leave_scope

PRICE = Price.per_million(input="0.15", output="0.60")
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what is my balance today"},
]


class Published:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, topic: str, key: bytes, value: bytes, headers: Any) -> None:
        self.records.append({"topic": topic, "key": key, **json.loads(value)})


def scope(step: str = "answer") -> tuple[AttemptScope, Published]:
    published = Published()
    ctx = StepContext(
        request_id="req-1", pipeline="unit", step=step, attempt=1, worker_id="w", request={}
    )
    return AttemptScope(ctx, load_settings(), published, lambda: 0), published


class in_scope:
    """Run the block as if inside a step attempt (the runtime does this around each step)."""

    def __init__(self, s: AttemptScope) -> None:
        self._scope = s

    def __enter__(self) -> AttemptScope:
        self._token = enter_scope(self._scope)
        return self._scope

    def __exit__(self, *exc: object) -> None:
        leave_scope(self._token)


def openai(server: Any, name: str, **kw: Any) -> ModelEndpoint:
    return ModelEndpoint(
        name, provider=OpenAICompatible(server.url), model="m-" + name, price=PRICE, **kw
    )


async def test_openai_chat_usage_and_cost_are_the_servers_times_the_price(servers):
    server = await servers("oa")
    llm = openai(server, "oa-chat")
    s, _ = scope()
    with in_scope(s):
        result = await llm.chat(MESSAGES, temperature=0)
    expected_in = input_tokens(MESSAGES)
    assert result.text == "you said what is my balance today"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (expected_in, 7)
    assert result.usage.source == "provider"
    assert result.cost_usd == PRICE.cost(expected_in, 7)
    assert result.cost_usd == (Decimal(expected_in) * Decimal("0.15") + 7 * Decimal("0.60")) / 10**6
    [call] = s.calls
    assert (call.endpoint, call.provider, call.model, call.operation, call.status) == (
        "oa-chat",
        "openai",
        "m-oa-chat",
        "chat",
        "SUCCESS",
    )
    assert call.cost_usd == result.cost_usd and call.usage_source == "provider"
    assert server.calls["chat"] == 1


async def test_openai_stream_publishes_every_token_in_order_with_exact_usage(servers):
    server = await servers("oa")
    llm = openai(server, "oa-stream")
    s, published = scope()
    deltas = []
    with in_scope(s):
        stream = llm.stream_chat(MESSAGES)
        async for event in stream:
            deltas.append(event.text)
    result = stream.result
    assert result is not None
    assert "".join(deltas) == result.text == "you said what is my balance today"
    assert result.usage.source == "provider"  # stream_options.include_usage was honoured
    assert result.cost_usd == PRICE.cost(input_tokens(MESSAGES), 7)
    [call] = s.calls
    assert call.streamed and call.ttft_ms is not None and call.status == "SUCCESS"
    kinds = [r["type"] for r in published.records]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"}
    assert [r["seq"] for r in published.records] == list(range(1, len(kinds) + 1))
    assert "".join(r["text"] for r in published.records) == result.text
    assert {r["topic"] for r in published.records} == {"weir.unit.stream"}
    assert published.records[-1]["usage"]["output_tokens"] == 7


async def test_stream_without_usage_support_is_estimated_and_says_so(servers):
    server = await servers("oa")
    llm = ModelEndpoint(
        "oa-nousage", provider=OpenAICompatible(server.url, stream_usage=False), price=PRICE
    )
    result = await llm.stream_chat(MESSAGES).collect()
    assert result.usage.source == "estimate"
    assert result.usage.output_tokens > 0


async def test_anthropic_chat_and_stream_report_the_servers_usage(servers):
    server = await servers("an")
    llm = ModelEndpoint(
        "an-chat", provider=Anthropic(server.url), model="claude-3-5-haiku-20241022"
    )
    price = llm.price()
    assert price == Price.per_million(input="0.80", output="4.00")  # dated name, default table
    s, published = scope()
    with in_scope(s):
        plain = await llm.chat(MESSAGES)
        streamed = await llm.stream_chat(MESSAGES).collect()
    expected_in = input_tokens(MESSAGES[1:], "be brief")  # the system prompt moved to `system`
    for result in (plain, streamed):
        assert result.text == "you said what is my balance today"
        assert (result.usage.input_tokens, result.usage.output_tokens) == (expected_in, 7)
        assert result.usage.source == "provider"
        assert result.cost_usd == price.cost(expected_in, 7)
    assert server.calls["messages"] == 1 and server.calls["messages_stream"] == 1
    assert [c.provider for c in s.calls] == ["anthropic", "anthropic"]
    assert published.records[-1]["type"] == "done"


async def test_embeddings_come_back_in_order_with_provider_usage(servers):
    server = await servers("emb")
    embedder = ModelEndpoint(
        "emb", provider=OpenAICompatible(server.url), model="text-embedding-3-small"
    )
    texts = ["card charged twice", "balance please", "x"]
    result = await embedder.embed(texts)
    assert result.vectors == [vector(t) for t in texts]
    assert result.usage.input_tokens == 6 and result.usage.source == "provider"
    assert result.cost_usd == Decimal(6) * Decimal("0.02") / 10**6


async def test_local_model_is_loaded_once_and_serves_embed_classify_and_chat():
    loads = []

    class Model:
        def embed(self, texts: list[str]) -> list[list[float]]:
            return [vector(t, 4) for t in texts]

        def classify(self, text: str) -> tuple[str, float]:
            return ("balance", 0.9) if "balance" in text else ("other", 0.4)

        def chat(self, messages: list[dict[str, Any]]) -> str:
            return "local answer"

    def load() -> Model:
        loads.append(1)
        return Model()

    local = ModelEndpoint("local-all", provider=LocalModel(load))
    s, _ = scope()
    with in_scope(s):
        results = await asyncio.gather(*(local.classify(f"balance {i}") for i in range(20)))
        vectors = await local.embed(["a b", "c"])
        answer = await local.chat([{"role": "user", "content": "hi"}])
    assert loads == [1]
    assert {(r.label, r.score) for r in results} == {("balance", 0.9)}
    assert vectors.vectors == [vector("a b", 4), vector("c", 4)]
    assert answer.text == "local answer"
    assert {c.usage_source for c in s.calls} == {"estimate"}
    assert {c.cost_usd for c in s.calls} == {Decimal(0)}
    assert {c.provider for c in s.calls} == {"local"}


@pytest.mark.parametrize(
    ("status", "error", "retriable"),
    [
        (500, ModelUnavailableError, True),
        (429, RateLimitedError, True),
        (400, ModelRequestError, False),
    ],
)
async def test_http_errors_become_typed_model_errors(servers, status, error, retriable):
    server = await servers("bad")
    server.behaviour.fail_rate = 1.0
    server.behaviour.fail_statuses = (status,)
    llm = openai(server, f"bad-{status}", breaker=None)
    s, _ = scope()
    with in_scope(s), pytest.raises(error) as raised:
        await llm.chat(MESSAGES)
    assert raised.value.retriable is retriable
    assert f"'bad-{status}'" in str(raised.value)  # the message names the endpoint
    [call] = s.calls
    assert call.status == "FAILURE" and call.error_type == error.error_type


async def test_a_hanging_endpoint_times_out(servers):
    server = await servers("hang")
    server.behaviour.hang_rate = 1.0
    llm = openai(server, "hang", timeout_s=0.3, breaker=None)
    with pytest.raises(ModelTimeoutError, match=r"within 0\.3s"):
        await llm.chat(MESSAGES)


async def test_failing_primary_falls_back_within_the_same_call(servers):
    primary, secondary = await servers("p"), await servers("s")
    primary.behaviour.fail_rate = 1.0
    backup = openai(secondary, "fb-secondary")
    llm = openai(primary, "fb-primary", fallbacks=[backup], breaker=None)
    s, _ = scope()
    with in_scope(s):
        result = await llm.chat(MESSAGES)
    assert result.endpoint == "fb-secondary"
    first, second = s.calls
    assert (first.endpoint, first.status, first.fallback_from) == ("fb-primary", "FAILURE", None)
    assert (second.endpoint, second.status, second.fallback_from) == (
        "fb-secondary",
        "SUCCESS",
        "fb-primary",
    )


async def test_a_request_the_endpoint_refuses_does_not_fall_back(servers):
    primary, secondary = await servers("p"), await servers("s")
    primary.behaviour.fail_rate = 1.0
    primary.behaviour.fail_statuses = (400,)
    llm = openai(primary, "refuse", fallbacks=[openai(secondary, "refuse-b")], breaker=None)
    with pytest.raises(ModelRequestError):
        await llm.chat(MESSAGES)
    assert secondary.total == 0


async def test_stream_cut_mid_answer_restarts_and_counts_both_attempts(servers):
    server = await servers("cut")
    server.behaviour.reply = lambda text: "one two three four five six seven eight"
    server.behaviour.cut_after = 3
    server.behaviour.cut_rate = 1.0
    backup_server = await servers("cut-backup")
    backup_server.behaviour.reply = server.behaviour.reply
    backup = openai(backup_server, "cut-backup")
    llm = openai(server, "cut-primary", fallbacks=[backup], stream_retries=1, breaker=None)
    s, published = scope()
    events = []
    with in_scope(s):
        stream = llm.stream_chat(MESSAGES)
        async for event in stream:
            events.append(event)
    result = stream.result
    assert result is not None
    assert result.text == "one two three four five six seven eight"
    assert result.restarts == 2 and result.endpoint == "cut-backup"
    assert [e.kind for e in events].count("restart") == 2
    assert events[-1].kind == "delta"
    # The answer after the last restart is complete; nothing before it was returned.
    after = events[max(i for i, e in enumerate(events) if e.kind == "restart") + 1 :]
    assert "".join(e.text for e in after) == result.text
    assert server.calls["stream"] == 2 and server.calls["cut"] == 2
    statuses = [(c.endpoint, c.status, c.error_type) for c in s.calls]
    assert statuses == [
        ("cut-primary", "FAILURE", "stream_interrupted"),
        ("cut-primary", "FAILURE", "stream_interrupted"),
        ("cut-backup", "SUCCESS", None),
    ]
    broken = s.calls[0]
    assert broken.output_tokens == 3 and broken.usage_source == "estimate"
    assert broken.cost_usd > 0  # the broken attempt was billed and is counted
    assert [r["type"] for r in published.records].count("restart") == 2


async def test_clean_eof_without_done_is_a_broken_stream_not_a_short_answer(servers):
    server = await servers("eof")
    server.behaviour.cut_after = 2
    server.behaviour.cut_mode = "eof"
    llm = openai(server, "eof", stream_retries=0, breaker=None)
    with pytest.raises(StreamInterruptedError, match="without \\[DONE\\]"):
        await llm.stream_chat(MESSAGES).collect()


async def test_breaker_opens_stops_calling_probes_and_closes(servers):
    server = await servers("brk")
    server.behaviour.fail_rate = 1.0
    server.behaviour.fail_statuses = (503,)
    policy = BreakerPolicy(failure_threshold=3, window_s=10, cooldown_s=0.5)
    llm = openai(server, "brk", breaker=policy)
    for _ in range(3):
        with pytest.raises(ModelUnavailableError):
            await llm.chat(MESSAGES)
    assert llm.breaker is not None and llm.breaker.state == "open"
    for _ in range(10):
        with pytest.raises(CircuitOpenError):
            await llm.chat(MESSAGES)
    assert server.total == 3  # the open breaker kept the calls away from the server
    await asyncio.sleep(0.6)
    assert llm.breaker.state == "half_open"
    with pytest.raises(ModelUnavailableError):  # the probe fails: open again
        await llm.chat(MESSAGES)
    assert llm.breaker.state == "open" and server.total == 4
    server.behaviour.fail_rate = 0.0
    await asyncio.sleep(0.6)
    assert (await llm.chat(MESSAGES)).text  # the probe succeeds: closed
    assert llm.breaker.state == "closed" and llm.breaker.opened == 2
    assert server.total == 5


async def test_open_breaker_sends_calls_to_the_fallback(servers):
    primary, secondary = await servers("p"), await servers("s")
    primary.behaviour.fail_rate = 1.0
    backup = openai(secondary, "brk-fb-b")
    llm = openai(
        primary,
        "brk-fb-a",
        fallbacks=[backup],
        breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60),
    )
    s, _ = scope()
    with in_scope(s):
        results = [await llm.chat(MESSAGES) for _ in range(20)]
    assert {r.endpoint for r in results} == {"brk-fb-b"}
    assert primary.total == 2 and secondary.total == 20
    refused = [c for c in s.calls if c.error_type == "circuit_open"]
    assert len(refused) == 18


async def test_concurrency_limit_is_back_pressure_not_errors(servers):
    server = await servers("lim")
    server.behaviour.latency_s = 0.05
    llm = openai(server, "lim", limits=Limits(max_concurrency=2))
    peak = 0

    async def call() -> None:
        nonlocal peak
        task = asyncio.create_task(llm.chat(MESSAGES))
        while not task.done():
            peak = max(peak, llm.in_flight)
            await asyncio.sleep(0.005)
        await task

    await asyncio.gather(*(call() for _ in range(8)))
    assert peak == 2 and server.calls["chat"] == 8


def test_literal_api_key_is_refused_without_repeating_it():
    with pytest.raises(SecretError) as raised:
        ModelEndpoint(
            "lit", provider=OpenAICompatible("http://127.0.0.1:1/v1"), api_key="sk-abc123"
        )
    assert "sk-abc123" not in str(raised.value)
    assert "endpoint 'lit'" in str(raised.value)


async def test_a_key_echoed_by_the_server_is_scrubbed_from_errors(servers, monkeypatch):
    canary = "sk-canary-7f3e9a1c2b"
    monkeypatch.setenv("WEIR_TEST_CANARY_KEY", canary)
    server = await servers("echo")
    server.behaviour.fail_rate = 1.0
    server.behaviour.fail_statuses = (401,)
    server.behaviour.echo_key_in_errors = True
    llm = ModelEndpoint(
        "echo", provider=OpenAICompatible(server.url, api_key="env:WEIR_TEST_CANARY_KEY")
    )
    with pytest.raises(ModelRequestError) as raised:
        await llm.chat(MESSAGES)
    assert server.api_keys == [canary]  # the key did reach the server
    assert canary not in str(raised.value) and "***" in str(raised.value)


def test_model_call_records_survive_the_wire():
    call = ModelCall(
        step="s",
        attempt=1,
        endpoint="e",
        provider="openai",
        model="m",
        operation="chat",
        status="SUCCESS",
        started_at=1,
        duration_ms=2.0,
        cost_usd=Decimal("0.0000123"),
    )
    assert ModelCall.from_record(call.to_record()) == call


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_secret_that_cannot_be_resolved_frees_the_half_open_probe(monkeypatch, streamed):
    monkeypatch.delenv("WEIR_TEST_UNSET_KEY", raising=False)
    llm = ModelEndpoint(
        f"probe-secret-{streamed}",
        provider=OpenAICompatible("http://127.0.0.1:1/v1"),
        api_key="env:WEIR_TEST_UNSET_KEY",
        breaker=BreakerPolicy(failure_threshold=1, cooldown_s=0),
    )
    assert llm.breaker is not None
    llm.breaker.record_failure()  # open; with no cooldown the next call is the probe
    with pytest.raises(SecretError, match="not set"):
        if streamed:
            await llm.stream_chat(MESSAGES).collect()
        else:
            await llm.chat(MESSAGES)
    # The probe learnt nothing about the endpoint: the next call may probe again.
    assert llm.breaker.allow()


async def test_an_error_body_that_breaks_off_is_still_a_typed_model_error():
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the request's headers; the body does not matter
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\noverlo")
        await writer.drain()
        writer.close()  # 6 of the promised 1000 bytes

    server = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = ModelEndpoint(
        "half-body", provider=OpenAICompatible(f"http://127.0.0.1:{port}/v1"), breaker=None
    )
    try:
        with pytest.raises(ModelUnavailableError, match="answered 503"):
            await llm.stream_chat(MESSAGES).collect()
    finally:
        await llm.provider.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("streamed", [False, True])
async def test_weirs_own_rate_limit_does_not_open_the_breaker(servers, streamed):
    server = await servers("own-limit")
    llm = openai(
        server,
        f"own-limit-{streamed}",
        limits=Limits(requests_per_minute=1),
        queue_timeout_s=0.1,
        breaker=BreakerPolicy(failure_threshold=1, cooldown_s=60),
    )

    async def call() -> None:
        if streamed:
            await llm.stream_chat(MESSAGES).collect()
        else:
            await llm.chat(MESSAGES)

    await call()  # takes the one request of this minute
    with pytest.raises(RateLimitedError, match="weir's own limit"):
        await call()
    assert llm.breaker is not None and llm.breaker.state == "closed"
    assert server.total == 1  # the refused call never reached the endpoint


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_resolved_again_on_the_next_call(servers, monkeypatch, status):
    variable = f"WEIR_TEST_ROTATED_KEY_{status}"  # the secret cache is per process
    monkeypatch.setenv(variable, "sk-old-key-0001")
    server = await servers("rotate")
    server.behaviour.fail_rate = 1.0
    server.behaviour.fail_statuses = (status,)
    llm = ModelEndpoint(
        f"rotate-{status}",
        provider=OpenAICompatible(server.url, api_key=f"env:{variable}"),
    )
    with pytest.raises(ModelRequestError):
        await llm.chat(MESSAGES)
    monkeypatch.setenv(variable, "sk-new-key-0002")  # the key was rotated
    server.behaviour.fail_rate = 0.0
    assert (await llm.chat(MESSAGES)).text
    assert server.api_keys == ["sk-old-key-0001", "sk-new-key-0002"]


async def test_a_cancelled_stream_publishes_abort_so_clients_stop_waiting(servers):
    server = await servers("slow-stream")
    server.behaviour.reply = lambda text: "one two three four five six seven eight"
    server.behaviour.chunk_delay_s = 0.2
    llm = openai(server, "slow-stream", breaker=None)
    s, published = scope()
    seen: list[str] = []

    async def step() -> None:  # as a step attempt would, until its timeout cancels it
        async for event in llm.stream_chat(MESSAGES):
            seen.append(event.text)

    with in_scope(s):
        task = asyncio.create_task(step())
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with asyncio.timeout(10):  # written in the background, shielded and bounded
        while not published.records or published.records[-1]["type"] != "abort":
            await asyncio.sleep(0.01)
    kinds = [r["type"] for r in published.records]
    assert kinds[0] == "delta" and kinds[-1] == "abort" and "done" not in kinds
    assert published.records[-1]["error_type"] == "cancelled"
    assert published.records[-1]["endpoint"] == "slow-stream"


async def test_a_stream_failing_before_any_token_publishes_abort(monkeypatch):
    monkeypatch.delenv("WEIR_TEST_UNSET_KEY", raising=False)
    llm = ModelEndpoint(
        "abort-secret",
        provider=OpenAICompatible("http://127.0.0.1:1/v1"),
        api_key="env:WEIR_TEST_UNSET_KEY",
    )
    s, published = scope()
    with in_scope(s), pytest.raises(SecretError):
        await llm.stream_chat(MESSAGES).collect()
    assert [(r["type"], r["error_type"]) for r in published.records] == [
        ("abort", "secret_unavailable")
    ]


async def test_the_models_route_prices_with_the_apps_settings_not_the_environment():
    from weir.sse import add_routes

    settings = load_settings(model_prices={"m-config-priced": {"input_per_1m": "3.5"}})
    llm = ModelEndpoint(
        "config-priced", provider=OpenAICompatible("http://127.0.0.1:1/v1"), model="m-config-priced"
    )
    app = web.Application()
    add_routes(app, settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}/models"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            states = await response.json()
    finally:
        await runner.cleanup()
    assert states[llm.name]["price_per_1m"] == {"input": "3.5", "output": "0"}
