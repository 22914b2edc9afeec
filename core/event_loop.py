"""Running a long-lived service's main coroutine on the event loop its settings name.

uvloop (libuv's loop, written in Cython) runs the same asyncio code with less work per
callback, future and socket call: the worker's hot path is mostly such calls once its
own code is compiled (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from weir.core.config import EventLoopKind
from weir.core.errors import ConfigError

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes a loop of ``kind`` (``None``: asyncio's default).

    ``auto`` is uvloop when it can be imported; ``uvloop`` without it installed is a
    ``ConfigError``.
    """
    if kind == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if kind == "uvloop":
            raise ConfigError(
                "WEIR_EVENT_LOOP=uvloop, but uvloop is not installed here; install it"
                " (pip install uvloop; it is not built for Windows) or set WEIR_EVENT_LOOP"
                " to auto or asyncio"
            ) from exc
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, loop: EventLoopKind) -> T:
    """Run ``main`` to completion on a new loop of kind ``loop``, as ``asyncio.run`` does."""
    try:
        factory = loop_factory(loop)
    except ConfigError:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
