"""Marking what a step does to the world, so that a replay of the step does not do it again.

A step that sends an email, charges a card or writes to another system wraps
that call in a function decorated ``@side_effect``.  In a live worker the
function runs as usual; inside a step replay (``weir replay``) it is not called
and returns its ``replay_value`` instead, so a replay only ever computes:

    >>> @side_effect(replay_value="not sent")
    ... def send_email(to: str, body: str) -> str:
    ...     return "sent"
    >>> send_email("a@example.com", "hi")
    'sent'
    >>> with replaying_as(ReplayTag("rs-1", "endpoint:candidate")):
    ...     send_email("a@example.com", "hi")
    'not sent'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["ReplayTag", "current_replay", "replaying_as", "side_effect"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class ReplayTag:
    """The step replay a call runs in."""

    replay_id: str
    variant: str
    """What is replayed: ``endpoint:<name>`` or ``variant:<module:function>``."""


_REPLAY: contextvars.ContextVar[ReplayTag | None] = contextvars.ContextVar(
    "weir_replay", default=None
)


def current_replay() -> ReplayTag | None:
    """The replay this task or step thread runs in, or ``None`` when it serves live traffic."""
    return _REPLAY.get()


@contextlib.contextmanager
def replaying_as(tag: ReplayTag) -> Iterator[None]:
    """Run the block as part of replay ``tag`` (side effects are skipped, spend is its own)."""
    token = _REPLAY.set(tag)
    try:
        yield
    finally:
        _REPLAY.reset(token)


@overload
def side_effect(fn: F, /) -> F: ...
@overload
def side_effect(*, replay_value: Any = None) -> Callable[[F], F]: ...
def side_effect(fn: Any = None, /, *, replay_value: Any = None) -> Any:
    """Mark ``fn`` as acting on the world: a step replay skips it and gets ``replay_value``.

    Works on plain and ``async`` functions, as ``@side_effect`` or
    ``@side_effect(replay_value=...)``.
    """

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def skipped_async(*args: Any, **kwargs: Any) -> Any:
                if _REPLAY.get() is not None:
                    return replay_value
                return await f(*args, **kwargs)

            wrapped: Any = skipped_async
        else:

            @functools.wraps(f)
            def skipped(*args: Any, **kwargs: Any) -> Any:
                if _REPLAY.get() is not None:
                    return replay_value
                return f(*args, **kwargs)

            wrapped = skipped
        wrapped.__weir_side_effect__ = True
        return wrapped  # type: ignore[no-any-return]

    return decorate(fn) if fn is not None else decorate
