"""Sending a step's model calls to another endpoint, for a step replay (``weir replay --endpoint``).

Inside ``substituting(candidate)`` every call a step makes through any
``ModelEndpoint`` (directly or through a ``Router``) goes to ``candidate``
and its fallbacks instead; the endpoint the step names is never called.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weir.processors.endpoint import ModelEndpoint

__all__ = ["substitute", "substituting"]

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
