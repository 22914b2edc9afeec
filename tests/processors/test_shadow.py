"""Live shadow: real broker, real worker, real local model servers."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest

from tests._kafka import read_results, read_topic
from tests._model_servers import input_tokens, vector
from tests.conftest import worker_env
from weir.processors import ModelEndpoint, OpenAICompatible, Price, Router, Rule, Shadow
from weir.processors.providers import LocalModel
from weir.processors.services import ModelServices
from weir.processors.shadow import in_share
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

PRIMARY = Price.per_token(input="0.000001", output="0.000002")
CANDIDATE = Price.per_token(input="0.000003", output="0.000004")


def _candidate_reply(text: str) -> str:
    n = int(text.split()[-1])
    return f"you said {text}" if n % 2 else f"a different answer {n}"


def _pipeline(name: str, router: Router) -> Pipeline:
    p = Pipeline(name)

    @p.step()
    async def answer(text: str) -> str:
        return (await router.chat([{"role": "user", "content": text}])).text

    return p


async def test_a_5_percent_shadow_of_2000_requests_leaves_results_alone_and_is_compared(
    kafka, pipeline_name, servers, repo_root
):
    primary, candidate = await servers("primary"), await servers("candidate")
    candidate.behaviour.reply = _candidate_reply
    candidate.behaviour.latency_s = 1.0  # far slower than the primary: it must not be waited for
    eps = {
        "primary": ModelEndpoint(
            f"{pipeline_name}-primary", provider=OpenAICompatible(primary.url), price=PRIMARY
        ),
        "candidate": ModelEndpoint(
            f"{pipeline_name}-candidate", provider=OpenAICompatible(candidate.url), price=CANDIDATE
        ),
    }
    router = Router(f"{pipeline_name}-router", default=eps["primary"], watch=False)
    router.add_rule(
        Rule("True", endpoint=eps["primary"], name="all", shadow=Shadow(eps["candidate"], 0.05))
    )
    p = _pipeline(pipeline_name, router)
    texts = [f"question {i}" for i in range(2000)]
    # One call per result: a step deadline hit on a starved CPU would retry a call.
    settings = kafka.model_copy(update={"step_timeout_s": 300.0})
    async with (
        Worker(p, settings, services=ModelServices(settings)),
        WeirClient(settings) as client,
    ):
        ids = await client.submit_many(p.name, [{"text": t} for t in texts])
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
        shadowed = {rid: t for rid, t in zip(ids, texts, strict=True) if in_share(rid, 0.05)}
        async with asyncio.timeout(120):
            while candidate.calls["chat"] < len(shadowed):
                await asyncio.sleep(0.2)
        records = await read_topic(kafka, PipelineTopics(p.name).shadow, until=len(shadowed))
    assert 60 <= len(shadowed) <= 140  # 5% of 2,000 is 100, give or take sampling
    assert candidate.calls["chat"] == len(shadowed)
    assert primary.calls["chat"] >= 2000 and max(counts.values()) == 1

    # Users' results are exactly what they are without a shadow.
    for rid, text in zip(ids, texts, strict=True):
        r = results[rid]
        assert r.status == "SUCCESS" and r.value == f"you said {text}"
        assert [c.endpoint for c in r.model_calls()] == [eps["primary"].name]
        tokens = input_tokens([{"content": text}]), len(f"you said {text}".split())
        assert r.cost_usd == PRIMARY.cost(*tokens)

    by_id = {json.loads(rec.value)["request_id"]: json.loads(rec.value) for rec in records}
    assert set(by_id) == set(shadowed)
    for rid, record in by_id.items():
        call = record["shadow"]["call"]
        assert record["shadow"]["output"] == _candidate_reply(shadowed[rid])
        assert call["endpoint"] == eps["candidate"].name
        # The answer was complete before the shadow call (which takes over a second) ended.
        assert results[rid].completed_at < call["started_at"] + call["duration_ms"]

    env = worker_env(kafka)
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "weir", "compare", "--shadow", p.name, "--since", "1h", "--json"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    n = len(shadowed)
    same = sum(_candidate_reply(t) == f"you said {t}" for t in shadowed.values())
    assert body["baseline"]["count"] == body["candidate"]["count"] == body["compared"] == n
    assert body["exact_match_rate"] == pytest.approx(same / n)
    expected = sum(
        (
            CANDIDATE.cost(input_tokens([{"content": t}]), len(_candidate_reply(t).split()))
            for t in shadowed.values()
        ),
        Decimal(0),
    )
    assert Decimal(body["candidate"]["cost_usd"]) == expected
    assert Decimal(body["baseline"]["cost_usd"]) == sum(
        (results[rid].cost_usd for rid in shadowed), Decimal(0)
    )
    assert body["candidate"]["latency_ms"]["p50"] >= 1000  # the candidate's scripted latency


async def test_shadow_spend_stops_at_its_own_budget(kafka, pipeline_name, servers):
    primary, candidate = await servers("primary"), await servers("candidate")
    eps = [
        ModelEndpoint(f"{pipeline_name}-{n}", provider=OpenAICompatible(s.url), price=price)
        for n, s, price in (("primary", primary, PRIMARY), ("candidate", candidate, CANDIDATE))
    ]
    budget = Decimal("0.002")  # about 50 of the candidate's calls
    router = Router(f"{pipeline_name}-router", default=eps[0], watch=False)
    router.add_rule(
        Rule("True", endpoint=eps[0], name="all", shadow=Shadow(eps[1], 1.0, budget_usd=budget))
    )
    p = _pipeline(pipeline_name, router)
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": f"question {i}"} for i in range(200)])
        results, _ = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
        records = await read_topic(kafka, PipelineTopics(p.name).shadow, idle_s=3.0)
    assert all(r.status == "SUCCESS" for r in results.values()) and primary.calls["chat"] >= 200
    costs = [Decimal(json.loads(r.value)["shadow"]["call"]["cost_usd"]) for r in records]
    assert 0 < len(records) == candidate.calls["chat"] < 200
    # The budget ledger lets the last call through while spend is below the limit.
    assert budget <= sum(costs) < budget + max(costs)


def test_a_rules_file_shadow_is_checked_like_the_rest_of_the_rule():
    from weir.core.errors import RoutingError
    from weir.processors.routes import load_rule_sets

    good = load_rule_sets(
        "router: r\ndefault: a\nrules:\n  - name: all\n    condition: 'True'\n    endpoint: a\n"
        "    shadow: {endpoint: b, share: 0.05, budget_usd: 2.00}\n"
    )[0]
    shadow = good.rules[0].shadow
    assert shadow is not None and (shadow.endpoint, shadow.share) == ("b", 0.05)
    assert shadow.budget_usd == Decimal("2.00") and good.endpoint_names() == {"a", "b"}
    with pytest.raises(RoutingError, match="share"):
        load_rule_sets(
            "router: r\nrules:\n  - name: all\n    condition: 'True'\n    endpoint: a\n"
            "    shadow: {endpoint: b, share: 5}\n"
        )
    with pytest.raises(RoutingError, match="shadow to 'b'"):
        Shadow("b", 0.0)


def test_weir_routes_show_prints_a_shadow_that_reads_back_the_same():
    from weir.processors.routes import dump_rule_set, load_rule_sets

    text = (
        "router: r\ndefault: a\nrules:\n  - name: all\n    condition: 'True'\n    endpoint: a\n"
        "    shadow: {endpoint: b, share: 0.05, budget_usd: 2.50, window: hour}\n"
    )
    rule_set = load_rule_sets(text)[0]
    assert load_rule_sets(dump_rule_set(rule_set))[0] == rule_set


class _Labeller:
    """A local classifier: ``classify(text)`` gives a label from the question's number."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.calls = 0

    def classify(self, text: str) -> str:
        self.calls += 1
        n = int(text.split()[-1])
        return _parity(n) if self.rule == "parity" else _candidate_label(n)


def _parity(n: int) -> str:
    return "even" if n % 2 == 0 else "odd"


def _candidate_label(n: int) -> str:
    # Scripted disagreement: the candidate calls every number from 150 on odd.
    return _parity(n) if n < 150 else "odd"


async def test_streamed_embedding_and_classification_calls_are_shadowed_and_compared(
    kafka, pipeline_name, servers, repo_root
):
    primary, candidate = await servers("primary"), await servers("candidate")
    candidate.behaviour.reply = _candidate_reply
    primary_labels, candidate_labels = _Labeller("parity"), _Labeller("size")

    def endpoint(name: str, **kw: Any) -> ModelEndpoint:
        return ModelEndpoint(f"{pipeline_name}-{name}", **kw)

    eps = {
        "chat": endpoint("primary", provider=OpenAICompatible(primary.url), price=PRIMARY),
        "chat2": endpoint("candidate", provider=OpenAICompatible(candidate.url), price=CANDIDATE),
        "emb": endpoint("emb", provider=OpenAICompatible(primary.url), model="e1"),
        "emb2": endpoint("emb2", provider=OpenAICompatible(candidate.url), model="e2"),
        "clf": endpoint("clf", provider=LocalModel(model=primary_labels)),
        "clf2": endpoint("clf2", provider=LocalModel(model=candidate_labels)),
    }
    share = 0.2
    routers = {}
    for kind in ("chat", "emb", "clf"):
        router = Router(f"{pipeline_name}-{kind}", default=eps[kind], watch=False)
        shadow = Shadow(eps[kind + "2"], share)
        routers[kind] = router.add_rule(Rule("True", endpoint=eps[kind], name=kind, shadow=shadow))
    p = Pipeline(pipeline_name)

    @p.step()
    async def answer(text: str) -> dict[str, Any]:
        streamed = await routers["chat"].stream_chat([{"role": "user", "content": text}]).collect()
        vectors = (await routers["emb"].embed([text])).vectors
        label = (await routers["clf"].classify(text)).label
        return {"answer": streamed.text, "vector": vectors[0], "label": label}

    texts = [f"question {i}" for i in range(300)]
    async with Worker(p, kafka, services=ModelServices(kafka)), WeirClient(kafka) as client:
        ids = await client.submit_many(p.name, [{"text": t} for t in texts])
        results, counts = await read_results(kafka, PipelineTopics(p.name).results, len(ids))
        shadowed = {rid: t for rid, t in zip(ids, texts, strict=True) if in_share(rid, share)}
        async with asyncio.timeout(120):
            while (
                candidate.calls["stream"] < len(shadowed)
                or candidate.calls["embeddings"] < len(shadowed)
                or candidate_labels.calls < len(shadowed)
            ):
                await asyncio.sleep(0.2)
        records = await read_topic(kafka, PipelineTopics(p.name).shadow, until=3 * len(shadowed))
        streamed = await read_topic(kafka, PipelineTopics(p.name).stream, idle_s=2.0)
    assert 30 <= len(shadowed) <= 90  # 20% of 300 is 60, give or take sampling
    assert candidate.calls["stream"] == candidate.calls["embeddings"] == len(shadowed)
    assert candidate_labels.calls == len(shadowed) and candidate.calls["chat"] == 0
    assert max(counts.values()) == 1 and primary_labels.calls >= 300

    # Users' results are the primaries' answers, and only the primary's tokens were streamed.
    for rid, text in zip(ids, texts, strict=True):
        r = results[rid]
        n = int(text.split()[-1])
        assert r.status == "SUCCESS"
        assert r.value == {
            "answer": f"you said {text}",
            "vector": vector(text),
            "label": _parity(n),
        }
        assert {c.endpoint for c in r.model_calls()} == {
            eps[k].name for k in ("chat", "emb", "clf")
        }
    assert streamed and not any(eps["chat2"].name.encode() in (s.value or b"") for s in streamed)

    by_router = collections.defaultdict(dict)
    for rec in records:
        body = json.loads(rec.value)
        by_router[body["router"]][body["request_id"]] = body
    for kind in ("chat", "emb", "clf"):
        assert set(by_router[routers[kind].name]) == set(shadowed), kind
    for rid, text in shadowed.items():
        n = int(text.split()[-1])
        assert by_router[routers["chat"].name][rid]["shadow"]["call"]["streamed"] is True
        assert by_router[routers["emb"].name][rid]["shadow"]["output"] == [vector(text)]
        assert by_router[routers["clf"].name][rid]["shadow"]["output"] == _candidate_label(n)

    def compare(kind: str) -> dict[str, Any]:
        args = ["compare", "--shadow", p.name, "--since", "1h", "--router", routers[kind].name]
        shown = subprocess.run(
            [sys.executable, "-m", "weir", *args, "--json"],
            cwd=repo_root,
            env=worker_env(kafka),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)  # type: ignore[no-any-return]

    n = len(shadowed)
    chat, emb, clf = [await asyncio.to_thread(compare, k) for k in ("chat", "emb", "clf")]
    for body in (chat, emb, clf):
        assert body["baseline"]["count"] == body["candidate"]["count"] == body["compared"] == n
    same = sum(_candidate_reply(t) == f"you said {t}" for t in shadowed.values())
    assert chat["exact_match_rate"] == pytest.approx(same / n)
    assert Decimal(chat["candidate"]["cost_usd"]) == sum(
        (
            CANDIDATE.cost(input_tokens([{"content": t}]), len(_candidate_reply(t).split()))
            for t in shadowed.values()
        ),
        Decimal(0),
    )
    assert emb["exact_match_rate"] == 1.0  # the servers embed a text the same way
    assert emb["candidate"]["input_tokens"] == sum(len(t.split()) for t in shadowed.values())
    agree = sum(
        _parity(int(t.split()[-1])) == _candidate_label(int(t.split()[-1]))
        for t in shadowed.values()
    )
    assert clf["exact_match_rate"] == pytest.approx(agree / n)
