"""What a step can learn about the request it is running for.

``StepContext`` is injected into step parameters annotated with it.
``AttemptScope`` is the runtime's side of the same attempt: processors (model
calls, streaming, routing) reach it through ``current_scope()`` to record what
they did and to publish on Kafka with the worker's producer.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weir.core.config import WeirSettings
    from weir.schemas.messages import Envelope, ModelCall
    from weir.streams.journal import CallJournal
    from weir.streams.services import WorkerServices
    from weir.streams.tracing import Tracing

__all__ = ["AttemptScope", "StepContext", "current_scope"]


class StepContext:
    """Injected into any step parameter annotated ``StepContext``.

    ``request`` and ``options`` are made on first use (a step that never reads them
    costs no JSON parse or copy): from ``source``, the envelope the attempt continues,
    when they are not given.
    """

    __slots__ = (
        "_options",
        "_request",
        "_source",
        "attempt",
        "pipeline",
        "request_id",
        "step",
        "submitted_at",
        "worker_id",
    )

    def __init__(
        self,
        *,
        request_id: str,
        pipeline: str,
        step: str,
        attempt: int,
        worker_id: str,
        request: dict[str, Any] | None = None,
        options: dict[str, str] | None = None,
        submitted_at: int = 0,
        source: Envelope | None = None,
    ) -> None:
        self.request_id = request_id
        self.pipeline = pipeline
        self.step = step
        self.attempt = attempt
        self.worker_id = worker_id
        self.submitted_at = submitted_at
        """Epoch milliseconds when the client submitted the request."""
        self._request = request
        self._options = options
        self._source = source

    @property
    def request(self) -> dict[str, Any]:
        """The request payload as submitted."""
        if self._request is None:
            self._request = self._source.request_object() if self._source is not None else {}
        return self._request

    @property
    def options(self) -> dict[str, str]:
        """The request's options (a copy: the step may change it)."""
        if self._options is None:
            self._options = dict(self._source.options) if self._source is not None else {}
        return self._options

    def __repr__(self) -> str:  # the request stays out: it may hold personal data
        return (
            f"StepContext(request_id={self.request_id!r}, pipeline={self.pipeline!r},"
            f" step={self.step!r}, attempt={self.attempt!r}, worker_id={self.worker_id!r},"
            f" submitted_at={self.submitted_at!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepContext):
            return NotImplemented
        return _fields(self) == _fields(other)

    __hash__ = None  # type: ignore[assignment]  # mutable caches: not hashable


def _fields(ctx: StepContext) -> tuple[Any, ...]:
    return (
        ctx.request_id,
        ctx.pipeline,
        ctx.step,
        ctx.attempt,
        ctx.worker_id,
        ctx.request,
        ctx.options,
        ctx.submitted_at,
    )


Publish = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[None]]
"""Sends ``(topic, key, value, headers)`` with the worker's producer and waits for the ack."""


@dataclass(slots=True)
class AttemptScope:
    """One step attempt as the runtime sees it; set for the duration of the step call."""

    context: StepContext
    settings: WeirSettings
    publish: Publish
    lag: Callable[[], int]
    """Messages waiting on this worker's partitions of the step's input topic."""
    tracing: Tracing | None = None
    """The worker's spans: model calls open child spans of the attempt's span with it."""
    calls: list[ModelCall] = field(default_factory=list)
    """Model calls of this attempt, appended by the model layer as they finish."""
    services: WorkerServices | None = None
    """The services the worker was given (the model layer's, for model calls)."""
    journal: CallJournal | None = None
    """Completed calls of the pipeline, so a redelivered attempt does not pay twice."""
    calls_made: int = 0
    """Journaled calls this attempt has started (``next_call_index``)."""
    history: Any = None
    """The conversation a ``History`` parameter receives (``weir.streams.conversation``)."""

    def next_call_index(self) -> int:
        """The index of the attempt's next model call (0, 1, ...), in the order made."""
        index = self.calls_made
        self.calls_made += 1
        return index

    def record(self, call: ModelCall, *, traced: bool = False) -> None:
        """Add a finished model call to the attempt, and its span to the attempt's trace.

        ``traced=True``: the caller already had a span open around the call (as
        ``ModelEndpoint`` does), so no second one is made from the record.
        """
        self.calls.append(call)
        collected = _COLLECTED.get()
        if collected is not None:
            collected.append(call)
        if self.tracing is not None and not traced:
            self.tracing.model_call(call)


_SCOPE: contextvars.ContextVar[AttemptScope | None] = contextvars.ContextVar(
    "weir_attempt_scope", default=None
)
_COLLECTED: contextvars.ContextVar[list[ModelCall] | None] = contextvars.ContextVar(
    "weir_collected_calls", default=None
)


def collect_calls() -> tuple[list[ModelCall], contextvars.Token[list[ModelCall] | None]]:
    """Start collecting the calls this task records (the journal: one call's records)."""
    calls: list[ModelCall] = []
    return calls, _COLLECTED.set(calls)


def stop_collecting(token: contextvars.Token[list[ModelCall] | None]) -> None:
    _COLLECTED.reset(token)


def current_scope() -> AttemptScope | None:
    """The attempt being run in this task or step thread, or ``None`` outside a worker."""
    return _SCOPE.get()


def enter_scope(scope: AttemptScope | None) -> contextvars.Token[AttemptScope | None]:
    """Make ``scope`` current (the executor does this around each step call)."""
    return _SCOPE.set(scope)


def leave_scope(token: contextvars.Token[AttemptScope | None]) -> None:
    _SCOPE.reset(token)
