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
    from weir.schemas.messages import ModelCall
    from weir.streams.journal import CallJournal
    from weir.streams.services import WorkerServices
    from weir.streams.tracing import Tracing

__all__ = ["AttemptScope", "StepContext", "current_scope"]


@dataclass(frozen=True, slots=True)
class StepContext:
    """Injected into any step parameter annotated ``StepContext``."""

    request_id: str
    pipeline: str
    step: str
    attempt: int
    worker_id: str
    request: dict[str, Any] = field(repr=False)
    """The request payload as submitted."""
    options: dict[str, str] = field(default_factory=dict)
    submitted_at: int = 0
    """Epoch milliseconds when the client submitted the request."""


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
