"""Routing inside running pipelines: rules, live rule changes, canaries, pressure, budgets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests._kafka import read_results
from tests.conftest import worker_env
from weir.processors import (
    Budget,
    ModelEndpoint,
    ModelServices,
    OpenAICompatible,
    Price,
    Router,
    Rule,
)
from weir.schemas.messages import now_ms
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics
from weir.web import WebServer

pytestmark = pytest.mark.kafka

LEGAL = (
    "This Agreement is entered into by the parties hereto. Whereas the Licensor shall indemnify"
    " the Licensee against any liability arising from a breach of the confidentiality clause"
    " number {n}."
)


def endpoint(name: str, server: Any, price: str = "1") -> ModelEndpoint:
    return ModelEndpoint(
        name,
        provider=OpenAICompatible(server.url),
        price=Price.per_million(input=price, output=price),
        breaker=None,
    )


def routed_pipeline(name: str, router: Router) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    async def answer(text: str) -> str:
        result = await router.chat([{"role": "user", "content": text}], max_tokens=32)
        return result.endpoint

    return p


async def test_1000_mixed_requests_follow_the_rules_and_a_live_rule_change(
    kafka, pipeline_name, servers, tmp_path, repo_root
):
    short, legal, fast, big, nxt = [
        await servers(n) for n in ("short", "legal", "fast", "big", "next")
    ]
    eps = {
        n: endpoint(f"{pipeline_name}-{n}", s)
        for n, s in [
            ("short", short),
            ("legal", legal),
            ("fast", fast),
            ("big", big),
            ("next", nxt),
        ]
    }
    router = Router(f"{pipeline_name}-router", default=eps["big"], endpoints=[eps["next"]])
    router.add_rule(
        Rule(
            "input.token_count < 500 and input.language == 'en'",
            endpoint=eps["short"],
            name="short-en",
        )
    )
    router.add_rule(
        Rule("input.document_type == 'legal'", endpoint=eps["legal"], priority=5, name="legal")
    )
    router.add_rule(Rule("latency_sla < 300", endpoint=eps["fast"], priority=10, name="tight-sla"))
    p = routed_pipeline(pipeline_name, router)
    english = [
        {"text": f"Where is my card number {i}? It has not arrived yet."} for i in range(300)
    ]
    contracts = [{"text": LEGAL.format(n=i)} for i in range(150)]
    urgent = [{"text": f"Block card {i} now please"} for i in range(100)]
    german = [
        {"text": f"Wo ist meine Karte Nummer {i}? Sie ist noch nicht angekommen."}
        for i in range(50)
    ]
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await asyncio.gather(
            client.submit_many(p.name, english),
            client.submit_many(p.name, contracts),
            client.submit_many(p.name, urgent, options={"latency_sla": "200"}),
            client.submit_many(p.name, german),
        )
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, 600)
        assert set(results) == {rid for group in ids for rid in group}
        # Counted at the servers: each kind of request went where the rules say.
        assert (
            short.calls["chat"],
            legal.calls["chat"],
            fast.calls["chat"],
            big.calls["chat"],
        ) == (300, 150, 100, 50)

        # Mid-run: keep submitting short English requests while `weir routes apply` moves
        # them to another endpoint; no restart, nothing lost.
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            f"""
router: {router.name}
default: {eps["big"].name}
rules:
  - name: short-en-next
    condition: input.token_count < 500 and input.language == 'en'
    endpoint: {eps["next"].name}
  - name: tight-sla
    condition: latency_sla < 300
    endpoint: {eps["fast"].name}
    priority: 10
"""
        )
        late = [{"text": f"Is my transfer {i} done? Please check it."} for i in range(400)]
        applied_at: list[int] = []

        async def apply() -> None:
            await asyncio.sleep(1.0)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "weir",
                "routes",
                "apply",
                str(rules),
                "--comment",
                "move short English to next",
                cwd=repo_root,
                env=worker_env(kafka),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert b"version 1 applied" in out
            applied_at.append(now_ms())

        async def trickle() -> list[str]:
            sent = []
            for i in range(0, 400, 10):
                sent += await client.submit_many(p.name, late[i : i + 10])
                await asyncio.sleep(0.1)
            return sent

        late_ids, _ = await asyncio.gather(trickle(), apply())
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, 1000)
    assert len(results) == 1000 and max(counts.values()) == 1  # none lost, none twice
    assert all(r.status == "SUCCESS" for r in results.values())
    assert fast.calls["chat"] == 100 and big.calls["chat"] == 50 and legal.calls["chat"] == 150
    assert short.calls["chat"] + nxt.calls["chat"] == 700
    calls = [results[rid].model_calls()[0] for rid in late_ids]
    switched = [c for c in calls if c.rules_version == 1]
    assert nxt.calls["chat"] == len(switched) > 0
    assert {c.rule for c in switched} == {"short-en-next"}
    first_switched = min(c.started_at for c in switched)
    assert first_switched - applied_at[0] < 5000, "workers took over 5s to follow the new rules"
    for c in calls:  # every call that started well after the change used it
        if c.started_at > applied_at[0] + 5000:
            assert c.rules_version == 1
    history = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", "routes", "history", router.name],
        cwd=repo_root,
        env=worker_env(kafka),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "move short English to next" in history.stdout


def test_a_rule_file_that_does_not_parse_is_refused_at_apply(kafka, tmp_path, repo_root):
    rules = tmp_path / "bad.yaml"
    rules.write_text("router: r\nrules:\n  - {name: broken, condition: 'lag >>', endpoint: a}\n")
    done = subprocess.run(
        [sys.executable, "-m", "weir", "routes", "apply", str(rules)],
        cwd=repo_root,
        env=worker_env(kafka),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "routing_invalid" in done.stderr and "'broken'" in done.stderr


async def test_canary_split_is_sticky_per_conversation_end_to_end(kafka, pipeline_name, servers):
    stable, canary = await servers("v1"), await servers("v2")
    v1, v2 = endpoint(f"{pipeline_name}-v1", stable), endpoint(f"{pipeline_name}-v2", canary)
    router = Router(f"{pipeline_name}-router", watch=False)
    router.add_rule(
        Rule("True", split={v1: 95, v2: 5}, sticky="request.conversation_id", name="canary")
    )
    p = Pipeline(pipeline_name)

    @p.step()
    async def answer(text: str, conversation_id: str) -> str:
        return (await router.chat([{"role": "user", "content": text}])).endpoint

    # 400 conversations of 5 turns each: 2,000 requests.
    payloads = [
        {"text": f"turn {t}", "conversation_id": f"c{c}"} for t in range(5) for c in range(400)
    ]
    # Exact call counts: a step deadline hit on a starved CPU would retry a call.
    settings = kafka.model_copy(update={"step_timeout_s": 300.0})
    async with (
        Worker(p, settings, services=ModelServices(settings)),
        WeirClient(settings) as client,
    ):
        ids = await client.submit_many(p.name, payloads)
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    by_conversation: dict[str, set[str]] = collections.defaultdict(set)
    for rid, payload in zip(ids, payloads, strict=True):
        by_conversation[payload["conversation_id"]].add(results[rid].value)
    assert all(len(v) == 1 for v in by_conversation.values()), "a conversation switched version"
    on_canary = sum(1 for v in by_conversation.values() if v == {v2.name})
    # Binomial(400, 0.05): mean 20, sd 4.4; four sd either way.
    assert 3 <= on_canary <= 38, on_canary
    assert canary.calls["chat"] == 5 * on_canary and stable.calls["chat"] == 2000 - 5 * on_canary


async def test_pressure_rule_sheds_load_while_lag_is_high_and_returns(
    kafka, pipeline_name, servers
):
    slow, quick = await servers("primary"), await servers("secondary")
    slow.behaviour.latency_s = 0.1
    primary, secondary = endpoint(f"{pipeline_name}-p", slow), endpoint(f"{pipeline_name}-s", quick)
    router = Router(f"{pipeline_name}-router", default=primary, watch=False)
    router.add_rule(Rule("lag > 60", hold_until="lag < 5", endpoint=secondary, name="shed"))
    p = routed_pipeline(pipeline_name, router)
    settings = kafka.model_copy(update={"max_in_flight": 10})
    async with (
        Worker(p, settings, services=ModelServices(settings)),
        WeirClient(settings) as client,
    ):

        async def one_by_one(n: int) -> None:
            for i in range(n):
                rid = await client.submit(p.name, {"text": f"calm {i}"})
                await client.wait_for(p.name, [rid], timeout=30)

        await one_by_one(15)
        assert (slow.calls["chat"], quick.calls["chat"]) == (15, 0)
        burst = await client.submit_many(p.name, [{"text": f"burst {i}"} for i in range(400)])
        await client.wait_for(p.name, burst, timeout=120)
        during = (slow.calls["chat"] - 15, quick.calls["chat"])
        await one_by_one(15)
    # The burst built lag on the slow primary: most of it went to the secondary...
    assert during[0] + during[1] == 400
    assert during[1] >= 300, during
    # ...and once it drained, traffic returned to the primary.
    assert slow.calls["chat"] - 15 - during[0] == 15 and quick.calls["chat"] == during[1]


@pytest.mark.parametrize("mode", ["reject", "downgrade"])
async def test_a_one_dollar_budget_stops_spending_at_one_dollar(
    kafka, pipeline_name, servers, mode
):
    pricey_server, cheap_server = await servers("pricey"), await servers("cheap")
    pricey = endpoint(f"{pipeline_name}-pricey", pricey_server, price="2000")
    cheap = endpoint(f"{pipeline_name}-cheap", cheap_server, price="0.1")
    budget = Budget(f"{pipeline_name}-budget", limit_usd="1.00", window="day", on_exceeded=mode)
    router = Router(f"{pipeline_name}-router", default=pricey, budget=budget, watch=False)
    if mode == "downgrade":
        router.add_rule(Rule("budget_exceeded", endpoint=cheap, name="downgrade"))
    p = routed_pipeline(pipeline_name, router)
    settings = kafka.model_copy(update={"web_port": 0})
    async with (
        Worker(p, settings, services=ModelServices(settings)) as worker,
        WeirClient(settings) as client,
        WebServer(settings, worker) as web,
    ):
        ids = await client.submit_many(p.name, [{"text": f"request {i} text"} for i in range(120)])
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{web.url}/stats")).json()
    # The ledger's keys are on /stats (one key here: per pipeline), none evicted.
    assert stats["budget_keys"]["in_memory"] >= 1 and stats["budget_keys"]["evicted"] == 0
    assert len(results) == 120
    calls = [c for r in results.values() for c in r.model_calls()]
    pricey_spend = sum((c.cost_usd for c in calls if c.endpoint == pricey.name), Decimal(0))
    one_request = max(c.cost_usd for c in calls if c.endpoint == pricey.name)
    # It spends up to the limit and then stops, overshooting by less than one request.
    assert Decimal("1.00") <= pricey_spend < Decimal("1.00") + one_request, pricey_spend
    served = collections.Counter(r.value for r in results.values() if r.status == "SUCCESS")
    assert pricey_server.calls["chat"] == served[pricey.name]
    if mode == "reject":
        failed = [r for r in results.values() if r.status == "FAILURE"]
        assert failed and {r.error_type for r in failed} == {"budget_exceeded"}
        assert cheap_server.calls["chat"] == 0
        assert len(failed) + served[pricey.name] == 120
    else:
        assert served[pricey.name] + served[cheap.name] == 120
        assert cheap_server.calls["chat"] == served[cheap.name] > 0


async def test_routers_follow_applied_versions_refuse_unknown_endpoints_and_reset(
    kafka, pipeline_name
):
    from weir.processors import LocalModel, RuleSet
    from weir.processors.routes import apply_rule_set, read_rule_sets, reset_rule_set
    from weir.streams.context import AttemptScope, StepContext, enter_scope, leave_scope

    a = ModelEndpoint(f"{pipeline_name}-a", provider=LocalModel(model=lambda m: "a"))
    b = ModelEndpoint(f"{pipeline_name}-b", provider=LocalModel(model=lambda m: "b"))
    router = Router(f"{pipeline_name}-router", default=a, endpoints=[b])
    ctx = StepContext(request_id="r", pipeline="p", step="s", attempt=1, worker_id="w", request={})

    async def publish(*_: object) -> None:
        return None

    # A step's scope: its worker's settings and services (the route watcher follows this broker).
    services = ModelServices(kafka)
    token = enter_scope(AttemptScope(ctx, kafka, publish, lambda: 0, services=services))
    try:

        async def endpoint_now() -> str:
            decision, _ = await router.route(text="hello")
            return decision.endpoint.name

        async def eventually(expected: str) -> float:
            started = time.monotonic()
            while (got := await endpoint_now()) != expected:
                assert time.monotonic() - started < 10, f"still {got}"
                await asyncio.sleep(0.1)
            return time.monotonic() - started

        assert await endpoint_now() == a.name and router.version == 0
        v1 = await apply_rule_set(kafka, RuleSet(router=router.name, default=b.name))
        assert v1.version == 1
        assert await eventually(b.name) < 5
        # A version naming an endpoint this worker's code lacks is refused; v1 stays.
        v2 = await apply_rule_set(kafka, RuleSet(router=router.name, default="nowhere"))
        assert (await read_rule_sets(kafka))[router.name].version == v2.version == 2
        await asyncio.sleep(1.5)
        assert await endpoint_now() == b.name and router.version == 1
        await reset_rule_set(kafka, router.name)
        assert await eventually(a.name) < 5 and router.version == 0
        watcher = services.watcher()
        assert watcher.running
    finally:
        leave_scope(token)
        await services.stop()
    assert not watcher.running  # stopped with its services


async def test_the_route_watcher_catches_up_once_the_broker_can_be_reached(kafka, pipeline_name):
    """No broker at first (a closed port), then a TCP relay to the real one: a blip."""
    from weir.core.config import load_settings
    from weir.processors.routes import RouteWatcher, apply_rule_set
    from weir.processors.rules import RuleSet

    host, port = kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        relay_port = sock.getsockname()[1]
    watcher = RouteWatcher(load_settings(kafka_bootstrap=f"127.0.0.1:{relay_port}"))
    watcher.max_backoff_s = 0.2
    assert await watcher.wait_ready(30) is False  # the broker is away
    server = await asyncio.start_server(relay, "127.0.0.1", relay_port)
    try:
        async with asyncio.timeout(60):
            await watcher._ready.wait()
        router = f"{pipeline_name}-watched"
        applied = await apply_rule_set(kafka, RuleSet(router=router, default="x"))
        async with asyncio.timeout(30):
            while watcher.latest.get(router) != applied:
                await asyncio.sleep(0.05)
        assert watcher.failures >= 1
    finally:
        await watcher.stop()
        server.close()
