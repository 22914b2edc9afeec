"""``EmbeddingBatcher``: one embedding call for the texts of many in-flight requests.

A worker runs up to ``max_in_flight`` records at once, and each embedding step
would otherwise make its own call, often for a single text.  The batcher
collects the texts of every step that calls it until a batch is full
(``max_batch_items`` texts or ``max_batch_tokens`` estimated tokens) or its
oldest text has waited ``max_wait_ms``, sends them as one call of its endpoint
(limits, breaker, fallbacks and timeout as for any call), and hands each step
its own vectors in its own order:

    >>> emb = ModelEndpoint("emb", provider=OpenAICompatible(url))  # doctest: +SKIP
    >>> batcher = EmbeddingBatcher(emb, max_batch_items=256, max_wait_ms=5)  # doctest: +SKIP
    >>> (await batcher.embed(["a", "b"])).vectors  # in a step       # doctest: +SKIP

While ``max_in_flight`` batch calls are out, new texts wait, so batches fill
up under load and stay small (a single text after ``max_wait_ms``) when idle.

A batch the endpoint rejects as a bad request (``model_request_invalid``) or
answers unreadably (``model_response_invalid``) is split in halves and each
half tried again, down to the one text that fails: that step gets the error
(and so its record goes to the dead-letter topic with that error type) while
its batch-mates succeed.  Transient failures (timeouts, 5xx, 429) are not
split: they fail every step of the batch, whose retry policies take over.

Each step is charged its share of a call: the call's input tokens apportioned
by the estimated tokens of its texts (largest remainder, so the shares sum to
the call's count), priced exactly, with the rounding remainder on the largest
share so the costs sum to the call's cost.  Each step records one
``ModelCall`` per batch call its texts were in, with its share.  A step returns
only when all its texts are done, so its record's offset is committed after
every text of it is embedded (at-least-once, as for any step).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from opentelemetry import context as otel_context

from weir.core.errors import (
    ConfigError,
    ModelError,
    ModelRequestError,
    ModelResponseError,
    WeirError,
)
from weir.processors._call import NO_META, CallMeta, CallTry, _record
from weir.processors._group import group_now, use_group
from weir.processors.endpoint import ModelEndpoint
from weir.processors.providers._base import ProviderCall
from weir.processors.results import Embeddings, Usage
from weir.processors.services import ModelServices, bind_services, services_now
from weir.processors.tokens import estimate_tokens
from weir.schemas.messages import now_ms
from weir.streams.context import AttemptScope, current_scope
from weir.streams.dead_letter import error_type_of

__all__ = ["Batching", "EmbeddingBatcher", "apportion"]

_NO_META = NO_META


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` as integers that sum to ``total``.

    Largest remainder: each share is rounded down, and the units left over go
    to the largest fractional parts (earlier shares first on ties).

    >>> apportion(10, [1, 1, 1])
    [4, 3, 3]
    >>> apportion(7, [0, 0])
    [4, 3]
    """
    if not weights:
        return []
    weights = [max(0, w) for w in weights]
    whole = sum(weights)
    if whole == 0:
        weights, whole = [1] * len(weights), len(weights)
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


@dataclass(frozen=True, slots=True)
class Batching:
    """``ModelEndpoint(batching=Batching(...))``: its ``embed()`` calls go through a batcher."""

    max_batch_items: int = 64
    max_batch_tokens: int | None = None
    max_wait_ms: float = 10.0
    max_in_flight: int = 4


class _Request:
    """One ``embed()`` call of a step: its texts, what came back, what it is charged."""

    __slots__ = (
        "endpoint",
        "future",
        "input_tokens",
        "left",
        "meta",
        "model",
        "otel",
        "scope",
        "source",
        "spent",
        "vectors",
    )

    def __init__(self, size: int, meta: CallMeta) -> None:
        self.future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self.vectors: list[list[float]] = [[] for _ in range(size)]
        self.left = size
        self.meta = meta
        self.scope: AttemptScope | None = current_scope()
        self.otel = otel_context.get_current()
        self.input_tokens = 0
        self.spent = Decimal(0)
        self.source = "provider"
        self.endpoint = ""
        self.model = ""


@dataclass(slots=True)
class _Item:
    request: _Request
    index: int
    text: str
    tokens: int
    arrived: float


@dataclass(slots=True)
class _Lane:
    """The texts waiting for one loop, one settings object and one set of call parameters."""

    params: dict[str, Any]
    slots: asyncio.Semaphore
    pending: deque[_Item] = field(default_factory=deque)
    pending_tokens: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    calls: set[asyncio.Task[None]] = field(default_factory=set)


class EmbeddingBatcher:
    """Collects texts from concurrent ``embed()`` calls into batch calls of ``endpoint``.

    ``max_batch_items``: texts per call (the endpoint's own maximum batch size).
    ``max_batch_tokens``: estimated input tokens per call (``None``: no bound;
    a single text over it goes alone).  ``max_wait_ms``: how long the oldest
    text waits for batch-mates.  ``max_in_flight``: batch calls out at once
    (the endpoint's ``Limits`` apply to each of them too).
    """

    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        max_batch_items: int = 64,
        max_batch_tokens: int | None = None,
        max_wait_ms: float = 10.0,
        max_in_flight: int = 4,
    ) -> None:
        where = f"EmbeddingBatcher({getattr(endpoint, 'name', endpoint)!r})"
        if not isinstance(endpoint, ModelEndpoint):
            raise ConfigError(f"{where}: endpoint must be a ModelEndpoint, got {endpoint!r}")
        for name, value in (
            ("max_batch_items", max_batch_items),
            ("max_in_flight", max_in_flight),
            ("max_batch_tokens", 1 if max_batch_tokens is None else max_batch_tokens),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
        if not isinstance(max_wait_ms, int | float) or max_wait_ms < 0:
            raise ConfigError(f"{where}: max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.endpoint = endpoint
        self.max_batch_items = max_batch_items
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.max_in_flight = max_in_flight
        self._lanes: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[int, str], _Lane]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"EmbeddingBatcher({self.endpoint.name!r}, max_batch_items={self.max_batch_items},"
            f" max_batch_tokens={self.max_batch_tokens}, max_wait_ms={self.max_wait_s * 1000:g})"
        )

    async def embed(
        self, texts: Sequence[str], *, meta: CallMeta = _NO_META, **params: Any
    ) -> Embeddings:
        """Vectors of ``texts`` in input order, with this call's share of usage and cost.

        Raises the ``ModelError`` of the first of ``texts`` that failed.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"endpoint {self.endpoint.name!r}: embed() takes a list of strings")
        request = _Request(len(texts), meta)
        if not texts:
            return self._result(request)
        services = services_now()
        merged = {**self.endpoint.params, **params}
        lane = self._lane(services, merged)
        now = time.monotonic()
        for index, text in enumerate(texts):
            tokens = max(1, estimate_tokens(text))
            lane.pending.append(_Item(request, index, text, tokens, now))
            lane.pending_tokens += tokens
        lane.wake.set()
        if lane.runner is None:
            context = contextvars.Context()  # no step's scope: the batch serves many
            context.run(bind_services, services)
            context.run(use_group, group_now())
            lane.runner = asyncio.create_task(
                self._dispatch(lane), name=f"weir-batch-{self.endpoint.name}", context=context
            )
        return await request.future

    async def aclose(self) -> None:
        """Stop this loop's batch calls (steps still waiting get ``CancelledError``)."""
        try:
            lanes = self._lanes.pop(asyncio.get_running_loop(), {})
        except RuntimeError:
            return
        tasks = [t for lane in lanes.values() for t in (lane.runner, *lane.calls) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- collecting ---------------------------------------------------------------------

    def _lane(self, services: ModelServices, params: Mapping[str, Any]) -> _Lane:
        loop = asyncio.get_running_loop()
        lanes = self._lanes.get(loop)
        if lanes is None:
            lanes = self._lanes[loop] = {}
            services.add_closer(self.aclose)
        key = (id(services.settings), json.dumps(params, sort_keys=True, default=repr))
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = _Lane(dict(params), asyncio.Semaphore(self.max_in_flight))
        return lane

    def _full(self, lane: _Lane) -> bool:
        if len(lane.pending) >= self.max_batch_items:
            return True
        return self.max_batch_tokens is not None and lane.pending_tokens >= self.max_batch_tokens

    async def _dispatch(self, lane: _Lane) -> None:
        """Form batches while texts wait: a free call slot first, then a full or old batch."""
        try:
            while lane.pending:
                await lane.slots.acquire()
                try:
                    await self._fill(lane)
                    batch = self._take(lane)
                except BaseException:
                    lane.slots.release()
                    raise
                if not batch:
                    lane.slots.release()
                    continue
                task = asyncio.create_task(self._call(lane, batch))
                lane.calls.add(task)
                task.add_done_callback(lane.calls.discard)
        finally:
            lane.runner = None

    async def _fill(self, lane: _Lane) -> None:
        """Wait until the batch is full or its oldest text has waited ``max_wait_ms``."""
        while lane.pending and not self._full(lane):
            left = lane.pending[0].arrived + self.max_wait_s - time.monotonic()
            if left <= 0:
                return
            lane.wake.clear()
            try:
                async with asyncio.timeout(left):
                    await lane.wake.wait()
            except TimeoutError:
                return

    def _take(self, lane: _Lane) -> list[_Item]:
        batch: list[_Item] = []
        tokens = 0
        while lane.pending and len(batch) < self.max_batch_items:
            item = lane.pending[0]
            if item.request.future.done():  # its step was cancelled or already failed
                lane.pending.popleft()
                lane.pending_tokens -= item.tokens
                continue
            if (
                batch
                and self.max_batch_tokens is not None
                and tokens + item.tokens > self.max_batch_tokens
            ):
                break
            lane.pending.popleft()
            lane.pending_tokens -= item.tokens
            batch.append(item)
            tokens += item.tokens
        return batch

    # -- calling ------------------------------------------------------------------------

    async def _call(self, lane: _Lane, batch: list[_Item]) -> None:
        try:
            await self._attempt(lane, batch)
        finally:
            lane.slots.release()

    async def _attempt(self, lane: _Lane, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.request.future.done()]
        if not live:
            return
        started_at, t0 = now_ms(), time.perf_counter()
        try:
            texts = [item.text for item in live]
            tokens = sum(item.tokens for item in live)
            answer = await self.endpoint._embed(texts, tokens, _NO_META, lane.params)
        except ModelError as exc:
            if len(live) > 1 and isinstance(exc, ModelRequestError | ModelResponseError):
                # Somewhere in the batch is a text the endpoint refuses: find it by halves.
                middle = len(live) // 2
                await self._attempt(lane, live[:middle])
                await self._attempt(lane, live[middle:])
                return
            self._fail(live, exc, started_at, t0)
            return
        except Exception as exc:  # a secret that cannot be resolved, a bug: no step may hang
            self._fail(live, exc, started_at, t0)
            return
        await self._scatter(live, answer, started_at, t0)

    def _served_by(self, name: str) -> ModelEndpoint:
        for ep in (self.endpoint, *self.endpoint.fallbacks):
            if ep.name == name:
                return ep
        return self.endpoint

    async def _scatter(
        self, live: list[_Item], answer: Embeddings, started_at: int, t0: float
    ) -> None:
        parts: dict[int, tuple[_Request, list[int]]] = {}
        for position, item in enumerate(live):
            parts.setdefault(id(item.request), (item.request, []))[1].append(position)
        requests = list(parts.values())
        weights = [sum(live[p].tokens for p in positions) for _, positions in requests]
        shares = apportion(answer.usage.input_tokens, weights)
        served = self._served_by(answer.endpoint)
        price = served.price()
        costs = [price.cost(share, 0) if price else Decimal(0) for share in shares]
        if costs:  # rounding left over goes to the largest share: the parts sum to the call
            largest = max(range(len(shares)), key=shares.__getitem__)
            costs[largest] += answer.cost_usd - sum(costs, Decimal(0))
        for (request, positions), share, cost in zip(requests, shares, costs, strict=True):
            if request.future.done():
                continue
            for p in positions:
                request.vectors[live[p].index] = answer.vectors[p]
            request.left -= len(positions)
            request.input_tokens += share
            request.spent += cost
            if answer.usage.source == "estimate":
                request.source = "estimate"
            request.endpoint, request.model = answer.endpoint, answer.model
            usage = Usage(share, 0, answer.usage.source)
            self._record(request, served, "SUCCESS", started_at, t0, usage, cost, None)
            if request.meta.on_cost is not None and cost:
                try:
                    await request.meta.on_cost(cost)
                except WeirError as exc:  # a budget spent: this step fails, the others go on
                    if not request.future.done():
                        request.future.set_exception(exc)
                    continue
            if request.left == 0 and not request.future.done():
                request.future.set_result(self._result(request))

    def _fail(self, live: list[_Item], error: Exception, started_at: int, t0: float) -> None:
        error_type = error_type_of(error)
        for item in live:
            request = item.request
            if request.future.done():
                continue
            nothing = Usage(0, 0, "provider")
            self._record(
                request, self.endpoint, "FAILURE", started_at, t0, nothing, Decimal(0), error_type
            )
            request.future.set_exception(error)

    def _record(
        self,
        request: _Request,
        served: ModelEndpoint,
        status: Any,
        started_at: int,
        t0: float,
        usage: Usage,
        cost: Decimal,
        error_type: str | None,
    ) -> None:
        if request.scope is None:
            return
        fallback_from = None if served is self.endpoint else self.endpoint.name
        share = CallTry(ProviderCall(endpoint=served.name, model=served.model), t0, usage)
        share.cost = cost
        token = otel_context.attach(request.otel)  # the span is a child of the step's
        try:
            _record(
                served,
                request.scope,
                None,
                "embeddings",
                status,
                started_at,
                t0,
                share,
                request.meta,
                fallback_from,
                error_type=error_type,
            )
        finally:
            otel_context.detach(token)

    def _result(self, request: _Request) -> Embeddings:
        return Embeddings(
            endpoint=request.endpoint or self.endpoint.name,
            model=request.model or self.endpoint.model,
            usage=Usage(
                request.input_tokens, 0, "estimate" if request.source == "estimate" else "provider"
            ),
            cost_usd=request.spent,
            rule=request.meta.rule,
            rules_version=request.meta.rules_version,
            vectors=request.vectors,
        )
