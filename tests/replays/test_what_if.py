"""What-if routing on recorded traffic: real broker, real worker, real local model servers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests._kafka import read_results
from tests._model_servers import input_tokens
from weir.processors import ModelEndpoint, OpenAICompatible, Price, Router, Rule
from weir.processors.routes import load_rule_sets
from weir.processors.services import ModelServices
from weir.replays.what_if import what_if
from weir.schemas.messages import now_ms
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

PRICES = {
    "small": Price.per_token(input="0.000001", output="0.000002"),
    "large": Price.per_token(input="0.00003", output="0.00006"),
    "mid": Price.per_token(input="0.00001", output="0.00002"),
}
LONG = " ".join(["word"] * 60)


async def test_what_if_reproduces_the_live_split_and_prices_a_candidate(
    kafka, pipeline_name, servers
):
    srv = {name: await servers(name) for name in PRICES}
    eps = {
        name: ModelEndpoint(
            f"{pipeline_name}-{name}", provider=OpenAICompatible(srv[name].url), price=price
        )
        for name, price in PRICES.items()
    }
    router = Router(
        f"{pipeline_name}-router", default=eps["small"], endpoints=[eps["mid"]], watch=False
    )
    router.add_rule(Rule("input.token_count > 40", endpoint=eps["large"], name="long"))
    router.add_rule(Rule("options.tier == 'gold'", endpoint=eps["large"], name="gold"))
    p = Pipeline(pipeline_name)

    @p.step()
    async def answer(text: str) -> str:
        return (await router.chat([{"role": "user", "content": text}])).text

    # A mixed workload: short and long questions, some from gold customers.
    workload = []
    for i in range(150):
        text = f"{LONG} {i}" if i % 3 == 0 else f"short question {i}"
        workload.append((text, {"tier": "gold"} if i % 5 == 0 else {}))
    since = now_ms() - 1000
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = [await client.submit(p.name, {"text": t}, options=o) for t, o in workload]
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
    assert all(r.status == "SUCCESS" for r in results.values())
    served = {name: s.calls["chat"] for name, s in srv.items()}
    assert served["mid"] == 0 and served["large"] > 0 and served["small"] > 0

    candidate = load_rule_sets(
        f"""
router: {router.name}
default: {eps["small"].name}
rules:
  - name: long-to-mid
    condition: input.token_count > 40
    endpoint: {eps["mid"].name}
"""
    )[0]
    report = await what_if(kafka, p, step="answer", candidate=candidate, history=[], since_ms=since)
    assert {name: s.calls["chat"] for name, s in srv.items()} == served, "a model was called"

    def tokens(text: str) -> tuple[int, int]:
        return input_tokens([{"content": text}]), len(f"you said {text}".split())

    def priced(choose) -> tuple[dict[str, int], Decimal]:
        calls: dict[str, int] = {}
        cost = Decimal(0)
        for text, options in workload:
            name = choose(text, options)
            calls[eps[name].name] = calls.get(eps[name].name, 0) + 1
            cost += PRICES[name].cost(*tokens(text))
        return calls, cost

    live_calls, live_cost = priced(
        lambda t, o: "large" if t.startswith(LONG) or o.get("tier") == "gold" else "small"
    )
    cand_calls, cand_cost = priced(lambda t, o: "mid" if t.startswith(LONG) else "small")
    assert report.inputs == report.routed == 150 and report.skipped == {}
    assert report.actual.calls == live_calls
    assert report.actual.calls == {eps[n].name: c for n, c in served.items() if c}
    assert (
        report.actual.cost_usd
        == live_cost
        == sum((r.cost_usd for r in results.values()), Decimal(0))
    )
    # The live rules, evaluated, reproduce what happened exactly.
    assert (report.live.calls, report.live.cost_usd) == (live_calls, live_cost)
    assert report.reproduced == 150
    assert (report.candidate.calls, report.candidate.cost_usd) == (cand_calls, cand_cost)
    assert report.cost_difference_usd == cand_cost - live_cost
    gold_short = sum(1 for t, o in workload if o.get("tier") == "gold" and not t.startswith(LONG))
    assert report.changed == 50 + gold_short  # every long one moves to mid; short gold to small
