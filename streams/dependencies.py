"""How a step waits for several dependencies: all of them (the default), or any of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["AnyOf", "any_of", "join_skipped_message"]


class AnyOf:
    """``depends_on=any_of(a, b)``: the step runs on whichever of ``a`` and ``b`` ran.

    Use it where a ``Branch`` sends a request down one of several paths that
    meet again (a *rejoin*).  The step waits until each listed step has
    either produced or been skipped for the request; it runs when at least
    one produced, and is skipped (with everything below it) when none did.

    A parameter named like one of the steps receives its output, or ``None``
    when that step was skipped; the first parameter not named after one
    receives the output of whichever ran (the first in the listed order when
    several did).

    >>> any_of("path_a", "path_b").steps
    ('path_a', 'path_b')
    """

    __slots__ = ("steps",)

    def __init__(self, *steps: str | Callable[..., Any]) -> None:
        self.steps: tuple[str | Callable[..., Any], ...] = steps

    def __iter__(self) -> Iterator[str | Callable[..., Any]]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        names = ", ".join(s if isinstance(s, str) else getattr(s, "__name__", "?") for s in self)
        return f"any_of({names})"


def any_of(*steps: str | Callable[..., Any]) -> AnyOf:
    """Depend on whichever of ``steps`` ran for the request (see ``AnyOf``)."""
    return AnyOf(*steps)


def join_skipped_message(step: str, skipped: list[str]) -> str:
    """Why an all-of join cannot run: the same words from the worker and ``run_local``."""
    return (
        f"step {step!r} needs all of its inputs, but {', '.join(map(repr, skipped))}"
        f" {'was' if len(skipped) == 1 else 'were'} skipped by a Branch for this request;"
        f" if {step!r} should run on whichever branch ran, declare it with"
        " depends_on=any_of(...)"
    )
