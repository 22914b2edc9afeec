"""``Router`` and ``Rule``: pick the endpoint for each call at runtime, from safe conditions.

    >>> from weir.processors import ModelEndpoint, LocalModel
    >>> small = ModelEndpoint("doc-small", provider=LocalModel(model=lambda m: "s"))
    >>> big = ModelEndpoint("doc-big", provider=LocalModel(model=lambda m: "b"))
    >>> router = Router("doc-router", default=big, watch=False)
    >>> router.add_rule(Rule(
    ...     "input.token_count < 500 and input.language == 'en'", endpoint=small, name="short-en"
    ... )).name
    'doc-router'
    >>> router.decide(text="Where is my card?").endpoint.name
    'doc-small'
    >>> Rule("input.tokens < 5", endpoint=small)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weir.core.errors.RoutingError: rule 'input.tokens < 5': input.tokens is not a feature ...

Conditions are Python-like expressions evaluated by simpleeval (never ``eval``)
over these names:

    input.<feature>   derived features (``weir.processors.features``) and caller-given ones
    request.<field>   the request payload
    options.<name>    the request options: text that compares with numbers as the number it
                      spells (``options.latency_sla < 500`` works; ``weir.processors.options``)
    latency_sla       ``options['latency_sla']`` in ms as a number (infinity when unset)
    lag               unprocessed messages of the calling step, group-wide (all workers)
    budget_exceeded   the router's budget is used up for its window (see ``Budget``)
    budget_spent, budget_remaining   USD as numbers

Strategies decide between the rules that match: ``first`` (highest
``priority``, then definition order), ``cheapest`` (lowest price for the
request's size) and ``fastest`` (lowest moving p50 latency of the endpoint in
this worker).  A rule's target is one ``endpoint`` or a weighted ``split``
(a canary: ``{"v1": 95, "v2": 5}``), sticky per ``sticky`` key (for example
``request.conversation_id``) so a conversation stays on one version.  A rule
with ``hold_until`` stays active, once its condition matched, until that
second condition is true: with ``condition="lag > 200", hold_until="lag < 20"``
load is shed to a cheaper endpoint while the step's consumer lag is high and
comes back once it has drained, without flapping at the threshold.

Rule sets can be replaced while workers run: ``weir routes apply rules.yaml``
puts a new version on the routes topic and every worker's router switches to
it within seconds (``weir.processors.routes``); the trace of each call records the
rule and the version that chose its endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from weir.core.errors import BudgetExceededError, RoutingError
from weir.processors._call import CallMeta
from weir.processors._choice import Decision, choose
from weir.processors._group import step_lag_now
from weir.processors.budget import Budget, Reservation
from weir.processors.chat_stream import ChatStream
from weir.processors.condition import condition_names
from weir.processors.endpoint import ModelEndpoint
from weir.processors.features import Features
from weir.processors.providers._base import Message
from weir.processors.results import ChatResult, Classification, Embeddings
from weir.processors.routing_rule import Rule
from weir.processors.rules import CompiledRule, RuleSet, Strategy
from weir.processors.services import services_now
from weir.processors.shadow import ShadowRunner
from weir.processors.substitution import probe
from weir.streams.context import current_scope

__all__ = ["Decision", "Router", "Rule"]

log = logging.getLogger("weir.models")


# -- the router ---------------------------------------------------------------------------------


@dataclass
class _Active:
    rule_set: RuleSet
    rules: list[CompiledRule]


class Router:
    """Routes calls to endpoints by rules; the rule set can be replaced at runtime.

    ``endpoints`` lists endpoints that rules on the routes topic may name besides
    those the code's rules and ``default`` already mention.  ``watch=False``
    keeps the code's rules (no routes topic), e.g. in a notebook.
    """

    def __init__(
        self,
        name: str,
        *,
        default: ModelEndpoint | None = None,
        strategy: Strategy = "first",
        endpoints: Sequence[ModelEndpoint] = (),
        budget: Budget | None = None,
        features: Sequence[str] = (),
        watch: bool = True,
    ) -> None:
        if strategy not in ("first", "cheapest", "fastest"):
            raise RoutingError(f"router {name!r}: unknown strategy {strategy!r}")
        self.name = name
        self._default = default
        self._strategy: Strategy = strategy
        self._rules: list[Rule] = []
        self._features = list(features)
        self._endpoints: dict[str, ModelEndpoint] = {}
        for ep in [*endpoints, *([default] if default else [])]:
            self._register(ep)
        self.budget = budget
        self.watch = watch
        self._code = self._code_rule_set()
        self._active = _Active(self._code, self._code.compile())
        self._held: set[str] = set()
        self._rejected: set[tuple[int, int | None]] = set()
        """Refused rule sets, by version and apply time (each is logged once)."""
        self.refused: tuple[int, str] | None = None
        """The newest rule-set version this router refused, and why (``None`` if none)."""
        self._option_warnings: set[tuple[str, int]] = set()
        """Rules (and versions) that met an option they cannot compare (logged once each)."""
        self._shadows = ShadowRunner(self)

    def __repr__(self) -> str:
        return f"Router({self.name!r}, rules={len(self._active.rules)}, version={self.version})"

    def _register(self, ep: ModelEndpoint) -> None:
        known = self._endpoints.get(ep.name)
        if known is not None and known is not ep:
            raise RoutingError(f"router {self.name!r}: two different endpoints named {ep.name!r}")
        self._endpoints[ep.name] = ep

    @property
    def endpoints(self) -> dict[str, ModelEndpoint]:
        return dict(self._endpoints)

    @property
    def version(self) -> int:
        """The version of the rule set in force (0: the rules in code)."""
        return self._active.rule_set.version

    @property
    def rule_set(self) -> RuleSet:
        return self._active.rule_set

    def add_rule(self, rule: Rule) -> Router:
        """Add a rule to the code's rule set (chainable)."""
        if not isinstance(rule, Rule):
            raise RoutingError(f"router {self.name!r}: add_rule takes a Rule, got {rule!r}")
        for ep in rule.endpoints():
            self._register(ep)
        self._rules.append(rule)
        self._features.extend(f for f in rule.features if f not in self._features)
        code = self._code_rule_set()
        self._check_endpoints(code)
        compiled = code.compile()
        if self._active.rule_set is self._code:
            self._active = _Active(code, compiled)
        self._code = code
        return self

    def _code_rule_set(self) -> RuleSet:
        return RuleSet(
            router=self.name,
            version=0,
            strategy=self._strategy,
            default=self._default.name if self._default else None,
            rules=[r.spec() for r in self._rules],
            features=list(self._features),
        )

    def _check_endpoints(self, rule_set: RuleSet) -> None:
        unknown = rule_set.endpoint_names() - set(self._endpoints)
        if unknown:
            raise RoutingError(
                f"router {self.name!r}: rule set version {rule_set.version} names unknown"
                f" endpoint(s) {sorted(unknown)} (known: {sorted(self._endpoints)})"
            )

    def use(self, rule_set: RuleSet | None) -> bool:
        """Switch to ``rule_set`` (``None``: back to the rules in code); ``False`` if refused."""
        if rule_set is None:
            self.refused = None
            if self._active.rule_set is not self._code:
                log.info("router %s: back to the rules in code", self.name)
                self._active = _Active(self._code, self._code.compile())
                self._held.clear()
            return True
        # The whole rule set is compared, not only its version: two racing applies can
        # publish different rule sets under one number, and the last one must win.
        active = self._active.rule_set
        if rule_set is active or (rule_set.version == active.version and rule_set == active):
            return True
        try:
            self._check_endpoints(rule_set)
            compiled = rule_set.compile()
        except RoutingError as exc:
            self.refused = (rule_set.version, str(exc))
            seen = (rule_set.version, rule_set.applied_at)
            if seen not in self._rejected:
                self._rejected.add(seen)
                log.error("router %s: keeping version %d: %s", self.name, self.version, exc)
            return False
        log.info(
            "router %s: rule set version %d in force (%d rules)",
            self.name,
            rule_set.version,
            len(compiled),
        )
        self._active = _Active(rule_set, compiled)
        self._held.clear()
        self.refused = None
        return True

    # -- deciding ------------------------------------------------------------------------

    def decide(
        self,
        *,
        text: str = "",
        messages: Sequence[Message] | None = None,
        features: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
        options: Mapping[str, str] | None = None,
        request_id: str | None = None,
        lag: int | None = None,
        budget: tuple[bool, Decimal, Decimal] | None = None,
        output_tokens: int = 256,
    ) -> Decision:
        """The endpoint for one call (synchronous; the rules in force now).

        Inside a step, ``request``, ``options``, ``request_id`` and ``lag``
        default to the current request's; ``budget`` is ``(exceeded, spent,
        remaining)``.
        """
        scope = current_scope()
        if scope is not None:
            ctx = scope.context
            request = ctx.request if request is None else request
            options = ctx.options if options is None else options
            request_id = request_id or ctx.request_id
            lag = step_lag_now(scope) if lag is None else lag
        active = self._active
        exceeded, spent, remaining = budget or (False, Decimal(0), Decimal("Infinity"))
        feats = Features(text, messages=messages, extra=features)
        namespace = condition_names(
            feats,
            request=request,
            options=options,
            features=features,
            lag=lag or 0,
            budget=(exceeded, spent, remaining),
        )
        return choose(
            active.rule_set,
            active.rules,
            namespace,
            feats,
            exceeded=exceeded,
            request_id=request_id or "",
            output_tokens=output_tokens,
            router=self.name,
            endpoints=self._endpoints,
            held=self._held,
            warned=self._option_warnings,
        )

    # -- calls -------------------------------------------------------------------------------

    async def route(
        self,
        *,
        text: str = "",
        messages: Sequence[Message] | None = None,
        features: Mapping[str, Any] | None = None,
        output_tokens: int = 256,
    ) -> tuple[Decision, Reservation | None]:
        """Pick up rule changes, check the budget, decide; the decision and its reservation."""
        if (what_if := probe()) is not None:  # ``weir routes what-if``: take the inputs, stop
            what_if.routed(
                self, text=text, messages=messages, features=features, output_tokens=output_tokens
            )
        if self.watch:
            await services_now().follow(self)
        if self.budget is None:
            return self.decide(
                text=text, messages=messages, features=features, output_tokens=output_tokens
            ), None
        status = await self.budget.status()
        decision = self.decide(
            text=text,
            messages=messages,
            features=features,
            output_tokens=output_tokens,
            budget=(status.exceeded, status.spent, status.remaining),
        )
        if decision.budget_exceeded:
            return decision, await self.budget.unreserved()
        feats = Features(text, messages=messages, extra=features)
        estimate = decision.endpoint.estimate_cost(int(feats.get("token_count")), output_tokens)
        reservation = await self.budget.reserve(estimate)
        if reservation is not None:
            return decision, reservation
        # The reservation would cross the limit: this call is over budget.
        if self.budget.on_exceeded == "reject":
            raise BudgetExceededError(self.budget.exceeded_message())
        decision = self.decide(
            text=text,
            messages=messages,
            features=features,
            output_tokens=output_tokens,
            budget=(True, status.spent, Decimal(0)),
        )
        return decision, await self.budget.unreserved()

    def _meta(self, decision: Decision, reservation: Reservation | None) -> CallMeta:
        return CallMeta(
            rule=decision.rule,
            rules_version=decision.rules_version,
            on_cost=reservation.spend if reservation is not None else None,
        )

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        features: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatResult:
        """A chat completion from the endpoint the rules choose."""
        decision, reservation = await self.route(
            messages=messages, features=features, output_tokens=_max_tokens(params)
        )
        try:
            result = await decision.endpoint.chat(
                messages, meta=self._meta(decision, reservation), **params
            )
        finally:
            if reservation is not None:
                reservation.release()
        self._shadows.after_chat(decision.rule, messages, params, result)
        return result

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        features: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatStream:
        """A streamed chat answer from the endpoint the rules choose (routed on first use)."""

        async def resolve() -> tuple[ModelEndpoint, CallMeta, Any]:
            decision, reservation = await self.route(
                messages=messages, features=features, output_tokens=_max_tokens(params)
            )

            def ended() -> None:  # the stream's last act, whether it succeeded or not
                if reservation is not None:
                    reservation.release()
                if stream.result is not None:
                    self._shadows.after_stream(decision.rule, messages, params, stream.result)

            return decision.endpoint, self._meta(decision, reservation), ended

        stream = ChatStream.routed(resolve, list(messages), params)
        return stream

    async def embed(
        self, texts: Sequence[str], *, features: Mapping[str, Any] | None = None, **params: Any
    ) -> Embeddings:
        decision, reservation = await self.route(
            text="\n".join(texts), features=features, output_tokens=0
        )
        try:
            embedded = await decision.endpoint.embed(
                texts, meta=self._meta(decision, reservation), **params
            )
        finally:
            if reservation is not None:
                reservation.release()
        self._shadows.after_embed(decision.rule, texts, params, embedded)
        return embedded

    async def classify(
        self, text: str, *, features: Mapping[str, Any] | None = None, **params: Any
    ) -> Classification:
        decision, reservation = await self.route(text=text, features=features, output_tokens=0)
        try:
            labelled = await decision.endpoint.classify(
                text, meta=self._meta(decision, reservation), **params
            )
        finally:
            if reservation is not None:
                reservation.release()
        self._shadows.after_classify(decision.rule, text, params, labelled)
        return labelled


def _max_tokens(params: Mapping[str, Any]) -> int:
    value = params.get("max_tokens") or params.get("max_completion_tokens")
    return int(value) if isinstance(value, int) and value > 0 else 1024
