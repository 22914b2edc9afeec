"""What-if routing: how a candidate rule set would split a step's recorded traffic, and its cost.

Each recorded input of the step runs the step function up to its first routed
call, with no model called (``probing``): the router's inputs (messages,
features, request options) are captured and the step ends there.  Each
rule set is then asked where that call would go (``Router.decide``).  Cost
is priced from what actually happened: the live call's token counts at the
chosen endpoint's price.  The rule set that was live for each call (by the
rules version the call recorded, from the routes history) is evaluated the
same way, so the report shows how well the evaluation reproduces reality.
Rules that read the lag or the budget see neither (lag 0, budget not
exceeded): such calls may not reproduce.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from weir.core.config import WeirSettings
from weir.core.errors import ConfigError, RoutingError, WeirError
from weir.processors.providers._base import Message
from weir.processors.router import Router
from weir.processors.rules import RuleSet
from weir.processors.services import ModelServices
from weir.processors.substitution import DirectCallProbed, RouteProbed, probing
from weir.replays.recording import PartitionRange, Recording
from weir.replays.records import in_sample
from weir.schemas.messages import ModelCall
from weir.streams.context import AttemptScope, StepContext
from weir.streams.executor import StepExecutor
from weir.streams.pipeline import Pipeline
from weir.streams.side_effects import ReplayTag, replaying_as

__all__ = ["RoutedCall", "Split", "WhatIfReport", "what_if"]


@dataclass(frozen=True)
class RoutedCall:
    """One recorded input's first routed call: what the router saw, and what happened."""

    request_id: str
    router: Router
    inputs: dict[str, Any]
    """``Router.decide`` keyword arguments (text, messages, features, request, options...)."""
    actual: ModelCall
    """The live call the router made."""


@dataclass
class Split:
    """Where a rule set sends the calls, and what they cost."""

    calls: dict[str, int] = field(default_factory=dict)
    """Endpoint -> calls."""
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0
    """Calls to an endpoint without a known price (counted at 0)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Calls no rule would route, by error type (e.g. ``no_route``)."""


@dataclass
class WhatIfReport:
    pipeline: str
    step: str
    router: str
    candidate_version: int
    inputs: int = 0
    """Recorded inputs read in the window (sampled)."""
    routed: int = 0
    """Of those, inputs whose live attempt made a routed call and whose step reached it again."""
    actual: Split = field(default_factory=Split)
    live: Split = field(default_factory=Split)
    """The rule set that was live for each call, evaluated."""
    candidate: Split = field(default_factory=Split)
    reproduced: int = 0
    """Calls where evaluating the live rule set gives the endpoint that was really called."""
    changed: int = 0
    """Calls the candidate sends elsewhere than where they went."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Inputs left out, by reason."""

    @property
    def cost_difference_usd(self) -> Decimal:
        return self.candidate.cost_usd - self.actual.cost_usd


class _Probe:
    def __init__(self, router_name: str) -> None:
        self.router_name = router_name
        self.captured: tuple[Router, dict[str, Any]] | None = None
        self.other: str | None = None

    def routed(
        self,
        router: Router,
        *,
        text: str,
        messages: Sequence[Message] | None,
        features: Mapping[str, Any] | None,
        output_tokens: int,
    ) -> None:
        if router.name != self.router_name:
            self.other = router.name  # the step routes elsewhere first: nothing to evaluate
            raise RouteProbed(router.name)
        self.captured = (
            router,
            {
                "text": text,
                "messages": messages,
                "features": features,
                "output_tokens": output_tokens,
            },
        )
        raise RouteProbed(router.name)


def _price(router: Router, endpoint: str, call: ModelCall, split: Split) -> None:
    split.calls[endpoint] = split.calls.get(endpoint, 0) + 1
    ep = router.endpoints.get(endpoint)
    price = ep.price() if ep is not None else None
    if price is None:
        split.unpriced += 1
        return
    split.cost_usd += price.cost(call.input_tokens, call.output_tokens)


async def what_if(
    settings: WeirSettings,
    pipeline: Pipeline,
    *,
    step: str,
    candidate: RuleSet,
    history: Sequence[RuleSet],
    since_ms: int,
    until_ms: int | None = None,
    sample: float = 1.0,
    on_progress: Callable[[int], None] | None = None,
) -> WhatIfReport:
    """Evaluate ``candidate`` on ``step``'s recorded traffic (``history``: rule sets applied)."""
    if step not in pipeline.steps:
        raise ConfigError(f"pipeline {pipeline.name!r} has no step {step!r}")
    report = WhatIfReport(pipeline.name, step, candidate.router, candidate.version)
    recording = Recording(settings, pipeline, step)
    ranges: list[PartitionRange] = await recording.ranges(since_ms, until_ms)
    items = []
    async for item, _tp, _next in recording.inputs(ranges):
        if item is not None and in_sample(item.request_id, sample):
            items.append(item)
    report.inputs = len(items)
    live = await recording.baseline({i.request_id for i in items}, since_ms)
    threads = ThreadPoolExecutor(2, thread_name_prefix="weir-what-if")
    executor = StepExecutor(
        pipeline.steps[step],
        pipeline=pipeline.name,
        worker_id="what-if",
        default_timeout_s=settings.step_timeout_s,
        threads=threads,
    )
    calls: list[RoutedCall] = []
    skipped: Counter[str] = Counter()
    services = ModelServices(settings)
    await services.start()
    try:
        for n, item in enumerate(items, 1):
            baseline = live.get(item.request_id)
            routed = [c for c in baseline.calls if c.rules_version is not None] if baseline else []
            routed.sort(key=lambda c: c.status != "SUCCESS")  # the call that answered first
            if not routed:
                skipped["no routed call recorded live"] += 1
                continue
            found = await _probe_one(settings, services, executor, item, candidate.router)
            if isinstance(found, str):
                skipped[found] += 1
                continue
            router, inputs = found
            calls.append(RoutedCall(item.request_id, router, inputs, routed[0]))
            if on_progress is not None:
                on_progress(n)
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
        await services.stop()
    report.skipped = dict(skipped)
    if calls:
        _evaluate(report, calls, candidate, history)
    return report


async def _probe_one(
    settings: WeirSettings,
    services: ModelServices,
    executor: StepExecutor,
    item: Any,
    router_name: str,
) -> tuple[Router, dict[str, Any]] | str:
    """The router and inputs of the step's first call through ``router_name``, or why not."""
    ctx: StepContext = executor.context(item.envelope)
    scope = AttemptScope(
        context=ctx, settings=settings, publish=_discard, lag=lambda: 0, services=services
    )
    probe = _Probe(router_name)
    with replaying_as(ReplayTag("what-if", "what-if")), probing(probe):
        try:
            await executor.run(item.inputs, item.envelope, scope)
        except WeirError as exc:
            if isinstance(exc.__cause__, DirectCallProbed):
                return "calls an endpoint directly before routing"
            if not isinstance(exc.__cause__, RouteProbed) and probe.captured is None:
                return f"step failed: {exc.error_type}"
    if probe.other is not None:
        return f"the step routes through {probe.other!r} first"
    if probe.captured is None:
        return f"the step made no call through router {router_name!r}"
    router, inputs = probe.captured
    inputs.update(request=ctx.request, options=ctx.options, request_id=ctx.request_id)
    return router, inputs


def _evaluate(
    report: WhatIfReport,
    calls: list[RoutedCall],
    candidate: RuleSet,
    history: Sequence[RuleSet],
) -> None:
    router = calls[0].router
    by_version = {rs.version: rs for rs in history if rs.router == router.name}
    in_force = router.rule_set if router.version else None
    actual: dict[str, str] = {}
    for call in calls:
        report.routed += 1
        # A call that fell back was routed to the endpoint it fell from.
        chosen = call.actual.fallback_from or call.actual.endpoint
        actual[call.request_id] = chosen
        _price(router, chosen, call.actual, report.actual)
    by_live: dict[int, list[RoutedCall]] = {}
    for call in calls:
        by_live.setdefault(call.actual.rules_version or 0, []).append(call)
    try:
        # One rule set at a time: switching is not free, and each switch is logged.
        for version, group in sorted(by_live.items()):
            live_set = by_version.get(version)
            if version and live_set is None:
                report.live.errors["version_not_in_history"] = len(group)
                continue
            for call, endpoint in _decide_all(router, live_set, group, report.live):
                report.reproduced += endpoint == actual[call.request_id]
        for call, endpoint in _decide_all(router, candidate, calls, report.candidate):
            report.changed += endpoint != actual[call.request_id]
    finally:
        router.use(in_force)  # this process's router as it was


def _decide_all(
    router: Router, rule_set: RuleSet | None, calls: list[RoutedCall], split: Split
) -> list[tuple[RoutedCall, str]]:
    """Where ``rule_set`` (``None``: the rules in code) sends each call, priced into ``split``."""
    if not router.use(rule_set):
        why = router.refused[1] if router.refused else "see the log"
        raise RoutingError(f"router {router.name!r} refuses the rule set: {why}")
    out = []
    for call in calls:
        try:
            endpoint = router.decide(**call.inputs, lag=0).endpoint.name
        except WeirError as exc:
            split.errors[exc.error_type] = split.errors.get(exc.error_type, 0) + 1
            continue
        _price(router, endpoint, call.actual, split)
        out.append((call, endpoint))
    return out


async def _discard(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    """A what-if publishes nothing."""
