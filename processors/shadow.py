"""Live shadow: a share of a routing rule's traffic is also sent to a candidate endpoint.

A rule with ``shadow: {endpoint: candidate, share: 0.05}`` answers every call
from the endpoint it routes to, as usual; for 5% of requests (chosen by a hash
of the request id, so every worker picks the same ones) the same call is then
made to ``candidate`` in the background, after the primary answer is back:
the step does not wait for it, the user's result and cost do not include it.
Both answers, with their model calls (tokens, cost, latency), go to the
pipeline's shadow topic ``weir.<pipeline>.shadow``, where
``weir compare --shadow <pipeline>`` compares them.  Shadow spend has its own
budget (``budget_usd`` per ``window``, counted on the costs topic like any
budget); once it is used up, calls are not shadowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from weir.core.errors import RoutingError, WeirError
from weir.processors.budget import Budget
from weir.processors.endpoint import ModelEndpoint
from weir.processors.rules import ShadowSpec
from weir.processors.tokens import estimate_messages
from weir.schemas.messages import ModelCall, now_ms
from weir.streams.context import AttemptScope, current_scope, enter_scope, leave_scope
from weir.topics.names import PipelineTopics

if TYPE_CHECKING:
    from weir.processors.providers._base import Message
    from weir.processors.results import ChatResult
    from weir.processors.router import Router

__all__ = ["Shadow", "ShadowRunner", "in_share"]

log = logging.getLogger("weir.shadow")


@dataclasses.dataclass(frozen=True)
class Shadow:
    """A rule's shadow in code: ``Rule(..., shadow=Shadow(candidate, share=0.05))``."""

    endpoint: ModelEndpoint | str
    share: float
    budget_usd: Decimal | str | None = None
    window: Literal["hour", "day", "month"] = "day"

    def __post_init__(self) -> None:
        self.spec()  # bad values fail where the rule is written

    def spec(self) -> ShadowSpec:
        name = self.endpoint if isinstance(self.endpoint, str) else self.endpoint.name
        try:
            return ShadowSpec(
                endpoint=name,
                share=self.share,
                budget_usd=None if self.budget_usd is None else Decimal(str(self.budget_usd)),
                window=self.window,
            )
        except ValidationError as exc:
            raise RoutingError(f"shadow to {name!r}: {exc.errors()[0]['msg']}") from None


def in_share(request_id: str, share: float) -> bool:
    """Whether ``request_id`` is among a ``share`` of requests (the same answer everywhere).

    >>> in_share("r1", 1.0), in_share("r1", 0.0)
    (True, False)
    """
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class ShadowRunner:
    """The shadow calls of one router, running in the background."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._tasks: set[asyncio.Task[None]] = set()

    def after(
        self,
        rule: str | None,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        primary: ChatResult,
    ) -> None:
        """Start the shadow call of ``rule`` for this request if it is in the share; never waits."""
        scope = current_scope()
        if rule is None or scope is None or primary.endpoint is None:
            return
        spec = next((r.shadow for r in self._router.rule_set.rules if r.name == rule), None)
        if spec is None or not in_share(scope.context.request_id, spec.share):
            return
        candidate = self._router.endpoints.get(spec.endpoint)
        if candidate is None or candidate.name == primary.endpoint:
            return
        # Its own attempt scope: the shadow's model call must not join the user's calls
        # (nor their cost), and its span must not join the user's trace.
        own = AttemptScope(
            context=scope.context,
            settings=scope.settings,
            publish=scope.publish,
            lag=scope.lag,
            services=scope.services,
        )
        first = next((c for c in reversed(scope.calls) if c.endpoint == primary.endpoint), None)
        task = asyncio.create_task(
            self._run(own, rule, spec, candidate, list(messages), dict(params), primary, first)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        scope: AttemptScope,
        rule: str,
        spec: ShadowSpec,
        candidate: ModelEndpoint,
        messages: list[Message],
        params: dict[str, Any],
        primary: ChatResult,
        primary_call: ModelCall | None,
    ) -> None:
        token = enter_scope(scope)
        try:
            budget = None
            if spec.budget_usd is not None:
                budget = Budget(
                    f"shadow-{self._router.name}-{rule}",
                    limit_usd=spec.budget_usd,
                    window=spec.window,
                )
            reservation = None
            if budget is not None:
                estimate = candidate.estimate_cost(
                    estimate_messages(messages), int(params.get("max_tokens") or 256)
                )
                reservation = await budget.reserve(estimate)
                if reservation is None:
                    log.debug("shadow of %s/%s: budget used up", self._router.name, rule)
                    return
            text: str | None = None
            error: str | None = None
            try:
                text = (await candidate.chat(messages, **params)).text
            except WeirError as exc:
                error = exc.error_type
            finally:
                if reservation is not None:
                    for call in scope.calls:
                        await reservation.spend(call.cost_usd)
                    reservation.release()
            ctx = scope.context
            record = {
                "request_id": ctx.request_id,
                "pipeline": ctx.pipeline,
                "step": ctx.step,
                "router": self._router.name,
                "rule": rule,
                "share": spec.share,
                "at": now_ms(),
                "primary": {
                    "output": primary.text,
                    "call": _call(primary_call),
                },
                "shadow": {
                    "output": text,
                    "error_type": error,
                    "call": _call(scope.calls[-1] if scope.calls else None),
                },
            }
            topic = PipelineTopics(ctx.pipeline).shadow
            await scope.publish(topic, ctx.request_id.encode(), json.dumps(record).encode(), [])
        except asyncio.CancelledError:
            raise
        except Exception:  # a shadow must never disturb the live path; say why, go on
            log.warning("shadow call of %s/%s failed", self._router.name, rule, exc_info=True)
        finally:
            leave_scope(token)


def _call(call: ModelCall | None) -> dict[str, Any] | None:
    return None if call is None else dataclasses.asdict(call) | {"cost_usd": str(call.cost_usd)}
