"""Routing rule sets, as rules files and the routes topic carry them (``RuleSet``).

A rule's target is one ``endpoint`` or a weighted ``split`` (a canary:
``{"v1": 95, "v2": 5}``), sticky per ``sticky`` key; ``hold_until`` keeps a
matched rule active until a second condition is true.  ``RuleSet.parse``
validates a rule set and compiles every condition, so one that does not parse
never reaches a router.

>>> RuleSet.parse({"router": "r", "default": "big",
...                "rules": [{"name": "short", "condition": "input.token_count < 500",
...                           "endpoint": "small"}]}).endpoint_names() == {"big", "small"}
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weir.core.errors import RoutingError
from weir.processors.condition import Condition, compile_condition

__all__ = ["CompiledRule", "RuleFollower", "RuleSet", "RuleSpec", "ShadowSpec", "Strategy"]

Strategy = Literal["first", "cheapest", "fastest"]


class ShadowSpec(BaseModel):
    """``shadow:`` of a rule: mirror ``share`` of its calls to ``endpoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(min_length=1, max_length=128)
    share: float = Field(gt=0, le=1)
    budget_usd: Decimal | None = Field(default=None, ge=0)
    """Most the shadow calls of this rule may spend per ``window`` (``None``: no limit)."""
    window: Literal["hour", "day", "month"] = "day"


class RuleSpec(BaseModel):
    """One rule as written in a rules file (endpoints by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    condition: str
    endpoint: str | None = None
    split: dict[str, float] | None = None
    """Endpoint name → weight (any positive numbers; 95 and 5 is a 95/5 canary)."""
    sticky: str | None = None
    """``request.<field>``, ``options.<name>`` or ``input.<feature>`` that keeps a split sticky."""
    priority: int = 0
    hold_until: str | None = None
    shadow: ShadowSpec | None = None
    """Also send a share of this rule's calls to a candidate endpoint, after the answer."""

    @model_validator(mode="after")
    def _one_target(self) -> RuleSpec:
        if (self.endpoint is None) == (self.split is None):
            raise ValueError(f"rule {self.name!r} needs exactly one of endpoint or split")
        if self.split is not None:
            if not self.split:
                raise ValueError(f"rule {self.name!r}: split is empty")
            bad = [k for k, w in self.split.items() if not (w > 0 and math.isfinite(w))]
            if bad:
                raise ValueError(f"rule {self.name!r}: split weights must be > 0 ({bad})")
        if self.sticky is not None and self.sticky.split(".", 1)[0] not in (
            "request",
            "options",
            "input",
        ):
            raise ValueError(
                f"rule {self.name!r}: sticky must be request.<field>, options.<name> or"
                f" input.<feature>, got {self.sticky!r}"
            )
        return self

    def endpoints(self) -> list[str]:
        names = [self.endpoint] if self.endpoint is not None else list(self.split or {})
        return names + ([self.shadow.endpoint] if self.shadow is not None else [])


class RuleSet(BaseModel):
    """A router's rules: one version on the routes topic."""

    model_config = ConfigDict(extra="forbid")

    router: str = Field(min_length=1, max_length=128)
    version: int = Field(default=0, ge=0)
    """Set by ``weir routes apply`` (0: the rules in code)."""
    strategy: Strategy = "first"
    default: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)
    """Caller-given feature names the conditions may read besides the derived ones."""
    applied_at: int | None = None
    applied_by: str | None = None
    comment: str | None = None

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RuleSpec]) -> list[RuleSpec]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}")
            seen.add(rule.name)
        return rules

    def compile(self) -> list[CompiledRule]:
        """Check every condition (``RoutingError`` naming the rule); the compiled rules."""
        features = frozenset(self.features)
        out = []
        for index, spec in enumerate(self.rules):
            out.append(
                CompiledRule(
                    spec=spec,
                    index=index,
                    condition=compile_condition(spec.condition, rule=spec.name, features=features),
                    hold=compile_condition(spec.hold_until, rule=spec.name, features=features)
                    if spec.hold_until
                    else None,
                )
            )
        return out

    def endpoint_names(self) -> set[str]:
        names = {n for r in self.rules for n in r.endpoints()}
        if self.default:
            names.add(self.default)
        return names

    @classmethod
    def parse(cls, data: Any, *, source: str = "rule set") -> RuleSet:
        """Validate ``data`` (a mapping) and compile its conditions; ``RoutingError`` if bad."""
        try:
            rule_set = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise RoutingError(f"{source} is invalid: {problems}") from None
        try:
            rule_set.compile()
        except RoutingError as exc:
            raise RoutingError(f"{source} (router {rule_set.router!r}): {exc}") from None
        return rule_set


@dataclass(frozen=True)
class CompiledRule:
    spec: RuleSpec
    index: int
    condition: Condition
    hold: Condition | None

    @property
    def reads_budget(self) -> bool:
        return "budget_exceeded" in self.condition.names


class RuleFollower(Protocol):
    """What following the routes topic needs of a router (``Router`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def watch(self) -> bool: ...

    @property
    def version(self) -> int: ...

    @property
    def refused(self) -> tuple[int, str] | None: ...

    @property
    def endpoints(self) -> Mapping[str, object]: ...

    def use(self, rule_set: RuleSet | None) -> bool: ...
