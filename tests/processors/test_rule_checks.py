"""Rules that cannot silently fail: typed options, refused mismatches, errors at the line."""

from __future__ import annotations

import logging

import pytest

from weir.core.errors import RoutingError
from weir.processors import LocalModel, ModelEndpoint
from weir.processors.options import OptionTypeError, OptionValue
from weir.processors.router import Router
from weir.processors.rules import Rule
from weir.processors.rules_file import load_rule_sets


def local(name: str) -> ModelEndpoint:
    return ModelEndpoint(name, provider=LocalModel(model=lambda messages: name))


def sla_router(name: str, condition: str) -> Router:
    router = Router(name, default=local(f"{name}-big"), watch=False)
    return router.add_rule(Rule(condition, endpoint=local(f"{name}-fast"), name="urgent"))


# -- options compare with numbers as numbers ------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "options", "fast"),
    [
        ("options.latency_sla < 500", {"latency_sla": "200"}, True),
        ("options.latency_sla < 500", {"latency_sla": "800"}, False),
        ("options.latency_sla < 500", {"latency_sla": " 499.5 "}, True),
        ("500 > options.latency_sla", {"latency_sla": "200"}, True),
        ("options.tier == 1", {"tier": "1"}, True),
        ("options.tier == '1'", {"tier": "1"}, True),
        ("options.tier != 2", {"tier": "1"}, True),
        ("options.debug == True", {"debug": "true"}, True),
        ("options.latency_sla < 500", {}, False),  # no such option: the rule does not apply
    ],
)
def test_options_compare_with_numbers_as_written(condition, options, fast) -> None:
    router = sla_router("opt", condition)
    chosen = router.decide(text="block my card", options=options).endpoint.name
    assert chosen == ("opt-fast" if fast else "opt-big")


def test_an_option_that_is_no_number_does_not_match_and_the_router_says_why(caplog) -> None:
    router = sla_router("opt-bad", "options.latency_sla < 500")
    with caplog.at_level(logging.WARNING, logger="weir.models"):
        for _ in range(3):
            decision = router.decide(text="x", options={"latency_sla": "fast"})
            assert decision.endpoint.name == "opt-bad-big"
    warnings = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert len(warnings) == 1  # once per rule, not per request
    assert "options.latency_sla is 'fast', not a number" in warnings[0]


def test_option_values_stay_text() -> None:
    value = OptionValue("200", name="latency_sla")
    assert isinstance(value, str) and value.upper() == "200" and {value: 1}["200"] == 1
    assert value < "3"  # text against text: text order
    with pytest.raises(OptionTypeError, match=r"options\.x is 'n/a'"):
        _ = OptionValue("n/a", name="x") >= 1


# -- refused when the rule is made or applied -----------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("input.language == 500", "input.language is text and 500 is a number"),
        ("latency_sla < '500'", "latency_sla is a number and '500' is text"),
        ("input.token_count != 'many'", "never compare equal"),
    ],
)
def test_comparing_a_number_with_text_is_refused_naming_the_mismatch(condition, problem) -> None:
    with pytest.raises(RoutingError, match="'mixed'") as raised:
        Rule(condition, endpoint=local("m"), name="mixed")
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("condition", "write"),
    [
        ("latency_sla < 500ms", "write 500 for 500ms"),
        ("options.latency_sla < 2s", "write 2000 for 2s"),
        ("latency_sla < 1.5 s", "write 1500 for 1.5s"),
    ],
)
def test_a_unit_after_a_number_says_the_unit_is_milliseconds(condition, write) -> None:
    with pytest.raises(RoutingError) as raised:
        Rule(condition, endpoint=local("u"), name="units")
    assert "milliseconds" in str(raised.value) and write in str(raised.value)


# -- rules files: errors point at the line and say what was expected ------------------------------

_HEAD = "router: r\ndefault: a\nrules:\n"


def problem(text: str) -> str:
    with pytest.raises(RoutingError) as raised:
        load_rule_sets(text, source="rules.yaml")
    return str(raised.value)


def test_a_condition_starting_with_a_quote_gets_the_fix_at_its_line() -> None:
    text = _HEAD + "  - name: en\n    condition: 'en' == input.language\n    endpoint: a\n"
    said = problem(text)
    assert said.startswith("rules.yaml, line 5:")
    assert "starts with a quote" in said
    assert "condition: \"'en' == input.language\"" in said
    assert "expected <block end>" not in said  # not the parser's own words
    # The fix it suggests parses.
    fixed = text.replace("'en' == input.language", "\"'en' == input.language\"")
    assert load_rule_sets(fixed)[0].rules[0].condition == "'en' == input.language"


@pytest.mark.parametrize(
    ("rules", "line", "said"),
    [
        ("  - name: u\n    condition: latency_sla < 500ms\n    endpoint: a\n", 5, "milliseconds"),
        ("  - name: k\n    conditon: lag > 5\n    endpoint: a\n", 5, "unknown key 'conditon'"),
        ("  - name: k\n    conditon: lag > 5\n    endpoint: a\n", 4, "condition is required"),
        (
            "  - name: p\n    condition: lag > 5\n    endpoint: a\n    priority: high\n",
            7,
            "integer",
        ),
        ("  - name: t\n    condition: lag > 5\n", 4, "needs exactly one of endpoint or split"),
        ("  - name: s\n    condition: lag >\n    endpoint: a\n", 5, "expected a Python-like"),
        ("  - name: x\n    condition: input.language == 5\n    endpoint: a\n", 5, "is text and"),
    ],
)
def test_rules_file_errors_point_at_the_line_and_say_what_was_expected(rules, line, said) -> None:
    text = problem(_HEAD + rules)
    assert f"rules.yaml, line {line}: " in text and said in text, text


def test_the_keys_a_rule_takes_are_listed_for_an_unknown_one() -> None:
    said = problem(_HEAD + "  - name: k\n    condition: 'True'\n    endpont: a\n")
    assert "expected one of: name, condition, endpoint, split, sticky, priority, hold_until" in said


def test_json_rules_files_still_load() -> None:
    sets = load_rule_sets(
        '{"router": "j", "rules": [{"name": "a", "condition": "lag > 1", "endpoint": "e"}]}'
    )
    assert sets[0].router == "j" and sets[0].rules[0].endpoint == "e"
