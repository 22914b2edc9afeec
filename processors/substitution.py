"""What the model layer does instead of calling, inside a step replay or a what-if evaluation.

Inside ``substituting(candidate)`` every call a step makes through any
``ModelEndpoint`` (directly or through a ``Router``) goes to ``candidate``
and its fallbacks instead; the endpoint the step names is never called.

Inside ``probing(probe)`` no model is called at all: a router about to route
hands its inputs to ``probe.routed(...)``, which raises ``RouteProbed`` to end
the step there; a direct endpoint call raises ``DirectCallProbed``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from weir.processors.endpoint import ModelEndpoint
    from weir.processors.providers._base import Message
    from weir.processors.router import Router

__all__ = [
    "DirectCallProbed",
    "RouteProbe",
    "RouteProbed",
    "probe",
    "probing",
    "substitute",
    "substituting",
]

_SUBSTITUTE: contextvars.ContextVar[ModelEndpoint | None] = contextvars.ContextVar(
    "weir_substitute_endpoint", default=None
)


def substitute() -> ModelEndpoint | None:
    """The endpoint that takes every model call of this task, or ``None`` (calls go as named)."""
    return _SUBSTITUTE.get()


@contextlib.contextmanager
def substituting(candidate: ModelEndpoint) -> Iterator[None]:
    """Send the block's model calls to ``candidate``."""
    token = _SUBSTITUTE.set(candidate)
    try:
        yield
    finally:
        _SUBSTITUTE.reset(token)


class RouteProbed(Exception):  # a signal that ends the step, not an error
    """Ends a probed step at its first routed call (the probe has what it needs)."""


class DirectCallProbed(Exception):
    """A probed step called an endpoint directly, not through a router."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.endpoint = endpoint


class RouteProbe(Protocol):
    def routed(
        self,
        router: Router,
        *,
        text: str,
        messages: Sequence[Message] | None,
        features: Mapping[str, Any] | None,
        output_tokens: int,
    ) -> None:
        """Take one routed call's inputs (and raise ``RouteProbed``)."""


_PROBE: contextvars.ContextVar[RouteProbe | None] = contextvars.ContextVar(
    "weir_route_probe", default=None
)


def probe() -> RouteProbe | None:
    """The what-if probe of this task, or ``None`` (models are called)."""
    return _PROBE.get()


@contextlib.contextmanager
def probing(route_probe: RouteProbe) -> Iterator[None]:
    """Within the block, routers hand their calls to ``route_probe`` and nothing is called."""
    token = _PROBE.set(route_probe)
    try:
        yield
    finally:
        _PROBE.reset(token)
