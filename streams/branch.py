"""Conditional routing: a step's decision to send a request down one sub-path only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Branch"]


@dataclass(frozen=True, init=False)
class Branch:
    """Return ``Branch(to, value)`` from a step to deliver ``value`` only to ``to``.

    ``to`` names one or more of the step's direct dependents (by name or by the
    decorated function).  The other dependents are skipped for this request, and
    so is everything below them; the request still completes with the outputs of
    the final steps that ran.

    >>> Branch("balance_lookup", {"account": "42"}).targets
    ('balance_lookup',)
    """

    targets: tuple[str, ...]
    value: Any

    def __init__(
        self, to: str | Callable[..., Any] | Sequence[str | Callable[..., Any]], value: Any = None
    ) -> None:
        items = [to] if isinstance(to, str) or callable(to) else list(to)
        object.__setattr__(self, "targets", tuple(_step_name(t) for t in items))
        object.__setattr__(self, "value", value)


def _step_name(target: str | Callable[..., Any]) -> str:
    if isinstance(target, str):
        return target
    name = getattr(target, "__weir_step__", None)
    if name is None:
        raise TypeError(f"{target!r} is not a weir step; pass its name or the decorated function")
    return str(name)
