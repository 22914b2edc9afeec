"""Routing rules: safe conditions, strategies, canary splits, hysteresis, budgets (no Kafka)."""

from __future__ import annotations

import asyncio
import math
import socket
from decimal import Decimal

import pytest

from tests.processors.test_endpoint import MESSAGES, in_scope, scope
from weir.core.config import load_settings
from weir.core.errors import BudgetExceededError, NoRouteError, RoutingError
from weir.processors import LocalModel, ModelEndpoint, OpenAICompatible, Price
from weir.processors.features import Features, document_type
from weir.processors.router import Router
from weir.processors.routes import RouteWatcher, latest_rule_sets, load_rule_sets
from weir.processors.rules import Rule, RuleSet

LEGAL = (
    "This Agreement is entered into by the parties hereto. Whereas the Licensor shall indemnify"
    " the Licensee against any liability arising from a breach of the confidentiality clause."
)


def local(name: str, price: str = "0") -> ModelEndpoint:
    return ModelEndpoint(
        name,
        provider=LocalModel(model=lambda messages: name),
        price=Price.per_million(input=price, output=price),
    )


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("input.token_count <", "not a valid expression"),
        ("tokens < 5", "unknown name 'tokens'"),
        ("input.tokens < 5", "input.tokens is not a feature"),
        ("input.language < 5", "input.language is text and 5 is a number"),
        ("len(lag) > 1", "fails on a sample request"),
        ("input.__class__", "not allowed"),
        ("[x for x in options]", "not allowed"),
        ("", "empty"),
        ("__import__('os').system('true')", "unknown name '__import__'"),
    ],
)
def test_bad_conditions_are_refused_naming_the_rule_and_the_problem(condition, problem):
    with pytest.raises(RoutingError) as raised:
        Rule(condition, endpoint=local("x"), name="my-rule")
    assert "'my-rule'" in str(raised.value) and problem in str(raised.value)


def test_features_are_derived_lazily_and_caller_features_win():
    f = Features("Where is my card?", extra={"language": "de", "tier": "gold"})
    assert f.known() == {"language": "de", "tier": "gold"}
    assert f.token_count == 5 and f.language == "de" and f.tier == "gold"
    assert document_type(LEGAL) == "legal"
    assert Features("Bonjour, je voudrais fermer mon compte bancaire.").language == "fr"


def test_first_match_by_priority_then_definition_order():
    short, legal, fast, big = (
        local("r1-short"),
        local("r1-legal"),
        local("r1-fast"),
        local("r1-big"),
    )
    router = Router("r1", default=big, watch=False)
    router.add_rule(Rule("input.token_count < 500 and input.language == 'en'", endpoint=short))
    router.add_rule(Rule("input.document_type == 'legal'", endpoint=legal, priority=5))
    router.add_rule(Rule("latency_sla < 300", endpoint=fast, priority=10, name="tight-sla"))
    assert router.decide(text="What is my balance?").endpoint is short
    assert router.decide(text=LEGAL).endpoint is legal  # short English too, but higher priority
    tight = router.decide(text=LEGAL, options={"latency_sla": "200"})
    assert (tight.endpoint, tight.rule, tight.rules_version) == (fast, "tight-sla", 0)
    assert router.decide(text="Wo ist meine Karte? Ich brauche sie heute.").endpoint is big


def test_no_match_without_default_is_a_clear_no_route_error():
    router = Router("r2", watch=False).add_rule(Rule("lag > 10", endpoint=local("r2-a")))
    with pytest.raises(NoRouteError, match="no rule matched"):
        router.decide(text="hi", lag=0)


def test_a_rule_reading_a_missing_request_field_does_not_match():
    router = Router("r3", default=local("r3-default"), watch=False)
    router.add_rule(Rule("request.tier == 'gold'", endpoint=local("r3-gold")))
    assert router.decide(text="x", request={}).endpoint.name == "r3-default"
    assert router.decide(text="x", request={"tier": "gold"}).endpoint.name == "r3-gold"


def test_cheapest_strategy_picks_the_lowest_price_for_the_request():
    router = Router("r4", strategy="cheapest", watch=False)
    router.add_rule(Rule("True", endpoint=local("r4-pricey", "5"), name="a", priority=9))
    router.add_rule(Rule("True", endpoint=local("r4-cheap", "0.1"), name="b"))
    router.add_rule(Rule("lag > 5", endpoint=local("r4-free", "0"), name="c"))
    assert router.decide(text="hello", lag=0).endpoint.name == "r4-cheap"
    assert router.decide(text="hello", lag=10).endpoint.name == "r4-free"


def test_fastest_strategy_follows_observed_latency():
    slow, quick = local("r5-slow"), local("r5-quick")
    for _ in range(20):
        slow.latency.observe(400.0)
        quick.latency.observe(40.0)
    router = Router("r5", strategy="fastest", watch=False)
    router.add_rule(Rule("True", endpoint=slow, name="slow", priority=5))
    router.add_rule(Rule("True", endpoint=quick, name="quick"))
    assert router.decide(text="x").endpoint is quick
    for _ in range(200):
        quick.latency.observe(900.0)
    assert router.decide(text="x").endpoint is slow


def test_canary_split_95_5_over_2000_conversations_is_within_tolerance_and_sticky():
    stable, canary = local("r6-v1"), local("r6-v2")
    router = Router("r6", watch=False)
    router.add_rule(
        Rule("True", split={stable: 95, canary: 5}, sticky="request.conversation_id", name="canary")
    )
    picks = {}
    for i in range(2000):
        d = router.decide(text="hi", request={"conversation_id": f"conv-{i}"}, request_id=f"r{i}")
        picks[f"conv-{i}"] = d.endpoint.name
    on_canary = sum(1 for name in picks.values() if name == "r6-v2")
    # Binomial(2000, 0.05): mean 100, sd 9.7; four sd either way.
    assert abs(on_canary - 100) <= 4 * math.sqrt(2000 * 0.05 * 0.95), on_canary
    for i in range(0, 2000, 7):  # every later turn of a conversation stays on its version
        d = router.decide(text="again", request={"conversation_id": f"conv-{i}"}, request_id="x")
        assert d.endpoint.name == picks[f"conv-{i}"]


def test_pressure_rule_holds_until_the_lag_drains():
    primary, cheap = local("r7-primary"), local("r7-cheap")
    router = Router("r7", default=primary, watch=False)
    router.add_rule(Rule("lag > 100", hold_until="lag < 10", endpoint=cheap, name="shed"))
    lags = [0, 50, 150, 90, 40, 11, 9, 50, 101]
    chosen = [router.decide(text="x", lag=lag).endpoint.name for lag in lags]
    assert chosen == [
        "r7-primary",
        "r7-primary",
        "r7-cheap",  # above the threshold: shed
        "r7-cheap",  # still held while draining
        "r7-cheap",
        "r7-cheap",
        "r7-primary",  # drained below 10: back
        "r7-primary",
        "r7-cheap",
    ]


def test_over_budget_only_rules_written_for_it_may_route():
    big, small = local("r8-big"), local("r8-small")
    router = Router("r8", default=big, watch=False)
    router.add_rule(Rule("budget_exceeded", endpoint=small, name="downgrade"))
    over = (True, Decimal(1), Decimal(0))
    assert router.decide(text="x").endpoint is big
    assert router.decide(text="x", budget=over).endpoint is small
    strict = Router("r8b", default=big, watch=False)
    with pytest.raises(BudgetExceededError):
        strict.decide(text="x", budget=over)


def test_rule_sets_from_yaml_are_validated_with_the_rules_named():
    good = load_rule_sets(
        """
router: support
strategy: first
default: big
rules:
  - name: short-en
    condition: input.token_count < 500 and input.language == 'en'
    endpoint: small
  - name: canary
    condition: "True"
    split: {big: 95, big-next: 5}
    sticky: request.conversation_id
"""
    )
    assert [r.name for r in good[0].rules] == ["short-en", "canary"]
    with pytest.raises(RoutingError, match=r"'broken'.*not a valid expression"):
        load_rule_sets("router: s\nrules:\n  - {name: broken, condition: 'lag >', endpoint: a}")
    with pytest.raises(RoutingError, match="exactly one of endpoint or split"):
        load_rule_sets("router: s\nrules:\n  - {name: r, condition: 'True'}")
    with pytest.raises(RoutingError, match="not valid YAML"):
        load_rule_sets("router: [unclosed")
    with pytest.raises(RoutingError, match="two rules are named"):
        load_rule_sets(
            "router: s\nrules:\n  - {name: a, condition: 'True', endpoint: x}\n"
            "  - {name: a, condition: 'True', endpoint: y}"
        )


def test_a_rule_set_naming_an_unknown_endpoint_is_refused_and_the_old_one_kept():
    router = Router("r9", default=local("r9-a"), watch=False)
    bad = RuleSet(router="r9", version=3, default="r9-missing")
    assert router.use(bad) is False and router.version == 0
    good = RuleSet(router="r9", version=4, default="r9-a")
    assert router.use(good) is True and router.version == 4


def test_a_different_rule_set_under_the_same_version_is_still_applied():
    a, b = local("r10-a"), local("r10-b")
    router = Router("r10", default=a, endpoints=[b], watch=False)
    first = RuleSet(router="r10", version=5, default="r10-a", applied_at=1)
    raced = RuleSet(router="r10", version=5, default="r10-b", applied_at=2)  # a racing apply
    assert router.use(first) and router.decide().endpoint is a
    assert router.use(raced) and router.decide().endpoint is b
    assert router.use(raced.model_copy()) and router.rule_set is raced  # same content: kept


def test_reading_the_routes_topic_skips_records_that_are_not_rule_sets():
    good = RuleSet(router="r11", version=2, default="r11-a").model_dump_json().encode()
    records = [
        ("r11", good, 1),
        ("r11", b"{not json", 2),
        ("r12", b"\xff\xfe", 3),
        ("r12", b'{"router": "r12", "version": "x"}', 4),
    ]
    assert latest_rule_sets(records) == {"r11": RuleSet.model_validate_json(good)}


async def test_routed_calls_record_rule_and_version_on_the_trace(servers):
    server = await servers("routed")
    mini = ModelEndpoint("r10-mini", provider=OpenAICompatible(server.url), model="gpt-4o-mini")
    router = Router("r10", default=mini, watch=False)
    router.add_rule(Rule("input.token_count < 500", endpoint=mini, name="short"))
    s, _ = scope()
    with in_scope(s):
        result = await router.chat(MESSAGES)
        streamed = await router.stream_chat(MESSAGES).collect()
    assert (result.rule, result.rules_version) == ("short", 0)
    assert streamed.rule == "short"
    assert [(c.rule, c.rules_version) for c in s.calls] == [("short", 0), ("short", 0)]


async def test_the_route_watcher_keeps_trying_while_the_broker_is_away_and_stops_on_cancel():
    with socket.socket() as sock:  # a port nobody listens on: no broker there
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}"
    watcher = RouteWatcher(load_settings(kafka_bootstrap=nowhere))
    watcher.max_backoff_s = 0.1
    # A failed connection ends the first call's wait at once, without the rule sets.
    assert await watcher.wait_ready(30) is False and watcher._failed
    async with asyncio.timeout(10):
        while watcher.failures < 3:
            await asyncio.sleep(0.05)
    task = watcher._task
    assert task is not None and not task.done()  # still trying, not dead
    await watcher.stop()
    assert task.cancelled()
