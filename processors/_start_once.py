"""Starting a service once, however many callers ask at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class StartOnce:
    """Runs ``start`` once: concurrent callers wait for the same run; after a failed run
    the next caller tries again.  A caller's cancellation does not cancel the run."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        self._start = start
        self._name = name
        self._running: asyncio.Task[None] | None = None

    @property
    def begun(self) -> bool:
        """A run is under way or has succeeded."""
        return self._running is not None

    async def __call__(self) -> None:
        if self._running is None:
            self._running = asyncio.create_task(self._start(), name=self._name)
        running = self._running
        try:
            await asyncio.shield(running)
        except BaseException:
            if running.done() and self._running is running:
                self._running = None  # it failed: the next caller tries again
            raise

    def reset(self) -> None:
        """Forget the run (the service stopped): the next call starts again."""
        self._running = None
