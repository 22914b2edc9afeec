"""Live shadow: a share of a routing rule's traffic is also sent to a candidate endpoint.

A rule with ``shadow: {endpoint: candidate, share: 0.05}`` answers every call
(chat, streamed chat, embeddings, classification) from the endpoint it routes to,
as usual; for 5% of requests (chosen by a hash of the request id, so every worker
picks the same ones) the same call is then
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from weir.core.errors import RoutingError, WeirError
from weir.processors.budget import Budget
from weir.processors.endpoint import ModelEndpoint
from weir.processors.rules import ShadowSpec
from weir.processors.tokens import estimate_messages, estimate_tokens
from weir.schemas.messages import ModelCall, now_ms
from weir.streams.context import (
    AttemptScope,
    Publish,
    current_scope,
    enter_scope,
    leave_scope,
)
from weir.topics.names import PipelineTopics

if TYPE_CHECKING:
    from weir.processors.providers._base import Message
    from weir.processors.results import ChatResult, Classification, Embeddings
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
    """The shadow calls of one router, running in the background.

    Every kind of routed call is shadowed the same way: chat (``after_chat``),
    streamed chat (``after_stream``: the candidate is streamed too, its tokens
    published nowhere), embeddings (``after_embed``) and classification
    (``after_classify``).  The record's outputs are the answer text, the vectors
    or the label, so ``weir compare`` scores them alike.
    """

    def __init__(self, router: Router) -> None:
        self._router = router
        self._tasks: set[asyncio.Task[None]] = set()

    def after_chat(
        self,
        rule: str | None,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        primary: ChatResult,
    ) -> None:
        """Start the shadow of a chat call if this request is in the share; never waits."""
        sent, kwargs = list(messages), dict(params)

        async def call(candidate: ModelEndpoint) -> Any:
            return (await candidate.chat(sent, **kwargs)).text

        self._after(rule, primary.endpoint, primary.text, call, _chat_size(sent, kwargs))

    def after_stream(
        self,
        rule: str | None,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        primary: ChatResult,
    ) -> None:
        """Start the shadow of a streamed chat call (streamed to the candidate too)."""
        sent, kwargs = list(messages), dict(params)

        async def call(candidate: ModelEndpoint) -> Any:
            return (await candidate.stream_chat(sent, **kwargs).collect()).text

        self._after(rule, primary.endpoint, primary.text, call, _chat_size(sent, kwargs))

    def after_embed(
        self,
        rule: str | None,
        texts: Sequence[str],
        params: Mapping[str, Any],
        primary: Embeddings,
    ) -> None:
        """Start the shadow of an embeddings call; its output is the vectors."""
        sent, kwargs = list(texts), dict(params)

        async def call(candidate: ModelEndpoint) -> Any:
            return (await candidate.embed(sent, **kwargs)).vectors

        size = (sum(estimate_tokens(t) for t in sent), 0)
        self._after(rule, primary.endpoint, primary.vectors, call, size)

    def after_classify(
        self, rule: str | None, text: str, params: Mapping[str, Any], primary: Classification
    ) -> None:
        """Start the shadow of a classification call; its output is the label."""
        kwargs = dict(params)

        async def call(candidate: ModelEndpoint) -> Any:
            return (await candidate.classify(text, **kwargs)).label

        self._after(rule, primary.endpoint, primary.label, call, (estimate_tokens(text), 0))

    def _after(
        self,
        rule: str | None,
        primary_endpoint: str | None,
        primary_output: Any,
        call: Callable[[ModelEndpoint], Awaitable[Any]],
        size: tuple[int, int],
    ) -> None:
        scope = current_scope()
        if rule is None or scope is None or primary_endpoint is None:
            return
        spec = next((r.shadow for r in self._router.rule_set.rules if r.name == rule), None)
        if spec is None or not in_share(scope.context.request_id, spec.share):
            return
        candidate = self._router.endpoints.get(spec.endpoint)
        if candidate is None or candidate.name == primary_endpoint:
            return
        # Its own attempt scope: the shadow's model call must not join the user's calls
        # (nor their cost), its span must not join the user's trace, and nothing it
        # publishes but its record reaches a topic (a streamed shadow's tokens would
        # otherwise reach the user's stream).
        shadow_topic = PipelineTopics(scope.context.pipeline).shadow
        own = AttemptScope(
            context=scope.context,
            settings=scope.settings,
            publish=_only_to(shadow_topic, scope.publish),
            lag=scope.lag,
            services=scope.services,
        )
        first = next((c for c in reversed(scope.calls) if c.endpoint == primary_endpoint), None)
        task = asyncio.create_task(
            self._run(own, rule, spec, candidate, call, size, primary_output, first)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        scope: AttemptScope,
        rule: str,
        spec: ShadowSpec,
        candidate: ModelEndpoint,
        call: Callable[[ModelEndpoint], Awaitable[Any]],
        size: tuple[int, int],
        primary_output: Any,
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
                reservation = await budget.reserve(candidate.estimate_cost(*size))
                if reservation is None:
                    log.debug("shadow of %s/%s: budget used up", self._router.name, rule)
                    return
            output: Any = None
            error: str | None = None
            try:
                output = await call(candidate)
            except WeirError as exc:
                error = exc.error_type
            finally:
                if reservation is not None:
                    for made in scope.calls:
                        await reservation.spend(made.cost_usd)
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
                    "output": primary_output,
                    "call": _call(primary_call),
                },
                "shadow": {
                    "output": output,
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


def _chat_size(messages: list[Message], params: dict[str, Any]) -> tuple[int, int]:
    """Input and (at most) output tokens of a chat call, for the shadow budget's reservation."""
    return estimate_messages(messages), int(params.get("max_tokens") or 256)


def _only_to(topic: str, publish: Publish) -> Publish:
    """``publish``, for records to ``topic`` only; the rest are dropped."""

    async def send(to: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if to == topic:
            await publish(to, key, value, headers)

    return send


def _call(call: ModelCall | None) -> dict[str, Any] | None:
    return None if call is None else dataclasses.asdict(call) | {"cost_usd": str(call.cost_usd)}
