"""The choice a router makes for one call: which of its rules match, and which endpoint wins.

Strategies, splits and ``hold_until`` as ``weir.processors.router`` describes them to users.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from simpleeval import InvalidExpression

from weir.core.errors import BudgetExceededError, NoRouteError
from weir.processors.condition import lookup
from weir.processors.endpoint import ModelEndpoint
from weir.processors.features import Features
from weir.processors.options import OptionTypeError
from weir.processors.rules import CompiledRule, RuleSet, Strategy

__all__ = ["Decision", "choose"]

# The router's logger: what is logged here is about the router's rules.
log = logging.getLogger("weir.models")


@dataclass(frozen=True)
class Decision:
    """Which endpoint a call goes to, and why."""

    endpoint: ModelEndpoint
    rule: str | None
    """``None``: no rule matched and the default took it."""
    rules_version: int
    budget_exceeded: bool = False


def choose(
    rule_set: RuleSet,
    rules: Sequence[CompiledRule],
    namespace: dict[str, Any],
    feats: Features,
    *,
    exceeded: bool,
    request_id: str,
    output_tokens: int,
    router: str,
    endpoints: Mapping[str, ModelEndpoint],
    held: set[str],
    warned: set[tuple[str, int]],
) -> Decision:
    """The decision of router ``router`` under ``rule_set`` (compiled as ``rules``).

    ``held`` names the rules a ``hold_until`` keeps active and ``warned`` the
    rules (and versions) already logged as unable to read an option; both are
    the router's, updated here.
    """
    version = rule_set.version
    matched: list[CompiledRule] = []
    for rule in rules:
        if exceeded and not rule.reads_budget:
            continue  # over budget, only rules written for that case may route
        if _matches(rule, namespace, held, warned, router, version):
            matched.append(rule)
    if not matched:
        if exceeded:
            raise BudgetExceededError(
                f"router {router!r}: budget exceeded and no rule for that case matched"
            )
        if rule_set.default is None:
            raise NoRouteError(
                f"router {router!r} (rules version {version}): no rule matched and there"
                " is no default endpoint"
            )
        return Decision(endpoints[rule_set.default], None, version, exceeded)
    choices = [(rule, _target(rule, namespace, request_id, router, endpoints)) for rule in matched]
    rule, endpoint = _pick(rule_set.strategy, choices, feats, output_tokens)
    return Decision(endpoint, rule.spec.name, version, exceeded)


def _matches(
    rule: CompiledRule,
    namespace: dict[str, Any],
    held: set[str],
    warned: set[tuple[str, int]],
    router: str,
    version: int,
) -> bool:
    name = rule.spec.name
    try:
        if rule.hold is not None and name in held:
            if rule.hold.evaluate(namespace):
                held.discard(name)
                return False
            return True
        hit = rule.condition.evaluate(namespace)
    except OptionTypeError as exc:
        # The caller sent an option the rule cannot read: say so (once per rule and
        # version), since the request silently takes another route.
        seen = (name, version)
        if seen not in warned:
            warned.add(seen)
            log.warning("router %s rule %s does not apply: %s", router, name, exc)
        return False
    except (InvalidExpression, TypeError, ValueError, KeyError, ZeroDivisionError) as exc:
        # A request without a field the rule reads does not match it.
        log.debug("router %s rule %s does not apply: %s", router, name, exc)
        return False
    if hit and rule.hold is not None:
        held.add(name)
    return hit


def _target(
    rule: CompiledRule,
    namespace: dict[str, Any],
    request_id: str,
    router: str,
    endpoints: Mapping[str, ModelEndpoint],
) -> ModelEndpoint:
    """Where ``rule`` sends this call: its ``endpoint``, or the one of its ``split`` for the key."""
    spec = rule.spec
    if spec.endpoint is not None:
        return endpoints[spec.endpoint]
    assert spec.split is not None
    key = request_id
    if spec.sticky is not None:
        value = lookup(namespace, spec.sticky)
        if value is not None:
            key = str(value)
    # A hash of the key rather than a random draw: the same key lands on the same
    # endpoint in every worker and after restarts, which is what makes a split sticky.
    digest = hashlib.sha256(f"{router}\0{spec.name}\0{key}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(spec.split.values())
    for name, weight in spec.split.items():
        if point < weight:
            return endpoints[name]
        point -= weight
    return endpoints[list(spec.split)[-1]]


def _pick(
    strategy: Strategy,
    choices: Sequence[tuple[CompiledRule, ModelEndpoint]],
    feats: Features,
    output_tokens: int,
) -> tuple[CompiledRule, ModelEndpoint]:
    """The matched rule and its target that ``strategy`` prefers (``choices`` is not empty)."""
    if strategy == "first":
        return max(choices, key=lambda c: (c[0].spec.priority, -c[0].index))
    if strategy == "cheapest":
        tokens = int(feats.get("token_count"))
        return min(
            choices,
            key=lambda c: (
                c[1].estimate_cost(tokens, output_tokens) if c[1].price() else Decimal("Infinity"),
                -c[0].spec.priority,
                c[0].index,
            ),
        )
    return min(
        choices,
        key=lambda c: (c[1].latency.percentile(50) or 0.0, -c[0].spec.priority, c[0].index),
    )
