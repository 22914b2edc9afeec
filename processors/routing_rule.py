"""``Rule``: a routing rule written in code, checked when it is made.

A ``Router`` turns its code rules into the rule set version 0 (``RuleSpec``s,
``weir.processors.rules``); rule sets on the routes topic replace it at runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from weir.core.errors import RoutingError
from weir.processors.condition import compile_condition
from weir.processors.endpoint import ModelEndpoint
from weir.processors.rules import RuleSpec
from weir.processors.shadow import Shadow

__all__ = ["Rule"]


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
    shadow: Shadow | None = None
    """Mirror a share of this rule's calls to a candidate endpoint (``weir.processors.shadow``)."""

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
        if self.shadow is not None:
            targets.append(self.shadow.endpoint)
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
            shadow=self.shadow.spec() if self.shadow is not None else None,
        )
