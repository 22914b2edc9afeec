"""Routing rules: rule sets as the routes topic carries them (``RuleSet``) and rules in code.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weir.core.errors import RoutingError
from weir.processors.condition import Condition, compile_condition
from weir.processors.endpoint import ModelEndpoint

__all__ = ["CompiledRule", "Rule", "RuleFollower", "RuleSet", "RuleSpec", "Strategy"]

Strategy = Literal["first", "cheapest", "fastest"]


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
        return [self.endpoint] if self.endpoint is not None else list(self.split or {})


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


@dataclass(frozen=True)
class Rule:
    """A routing rule in code; ``endpoint``/``split`` take endpoints or their names."""

    condition: str
    endpoint: ModelEndpoint | str | None = None
    split: Mapping[ModelEndpoint | str, float] | None = None
    name: str | None = None
    """Defaults to the condition's text; shown on every call the rule routes."""
    priority: int = 0
    sticky: str | None = None
    hold_until: str | None = None
    features: Sequence[str] = ()
    """Caller-given feature names this rule reads as ``input.<name>``."""

    def __post_init__(self) -> None:
        name = self.name or self.condition
        object.__setattr__(self, "name", name)
        compile_condition(self.condition, rule=name, features=frozenset(self.features))
        if self.hold_until is not None:
            compile_condition(self.hold_until, rule=name, features=frozenset(self.features))
        try:
            self.spec()
        except ValidationError as exc:
            raise RoutingError(f"rule {name!r}: {exc.errors()[0]['msg']}") from None

    def endpoints(self) -> list[ModelEndpoint]:
        targets = [self.endpoint] if self.endpoint is not None else list(self.split or {})
        return [t for t in targets if isinstance(t, ModelEndpoint)]

    def spec(self) -> RuleSpec:
        def name_of(target: ModelEndpoint | str) -> str:
            return target.name if isinstance(target, ModelEndpoint) else target

        return RuleSpec(
            name=str(self.name),
            condition=self.condition,
            endpoint=name_of(self.endpoint) if self.endpoint is not None else None,
            split={name_of(k): float(v) for k, v in self.split.items()} if self.split else None,
            sticky=self.sticky,
            priority=self.priority,
            hold_until=self.hold_until,
        )


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
    def endpoints(self) -> Mapping[str, ModelEndpoint]: ...

    def use(self, rule_set: RuleSet | None) -> bool: ...
