"""The sink's hold on the trace store: opened when needed, backed off from while it is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from weir.core.errors import TraceStoreError
from weir.traces._sink_batch import SinkStats
from weir.traces.store import TraceStore

__all__ = ["StoreFactory", "StoreLink"]

log = logging.getLogger("weir.sink")

StoreFactory = Callable[[], TraceStore]


class StoreLink:
    """The store the sink inserts into, and how long to wait after it failed."""

    def __init__(
        self,
        open_store: StoreFactory,
        *,
        stats: SinkStats,
        max_backoff_s: float,
        held: Callable[[], int],
    ) -> None:
        self._open = open_store
        self._held = held
        """How many events wait for the store (for the log)."""
        self._stats = stats
        self._max_backoff_s = max_backoff_s
        self.store: TraceStore | None = None
        self.backoff = 0.0
        """Seconds to wait before trying the store again (0 while it answers)."""

    async def ensure(self) -> TraceStore:
        """The open store, opened now if needed; ``TraceStoreError`` while it is down."""
        if self.store is None:
            try:
                self.store = await asyncio.to_thread(self._open)
            except TraceStoreError as exc:
                self.unavailable(exc)
                raise
            self.available()
        return self.store

    def unavailable(self, exc: Exception) -> None:
        """Count a failure and back off further."""
        self._stats.store_failures += 1
        self._stats.available = False
        self.backoff = min(self._max_backoff_s, max(0.25, self.backoff * 2))
        log.warning(
            "trace store unavailable (%s); %d events held, retrying in %.1fs",
            exc,
            self._held(),
            self.backoff,
        )
        if self.store is not None and self.store.dsn.startswith("chdb://"):
            # The embedded engine is reopened rather than reused after a failure.
            self.store.close()
            self.store = None

    def available(self) -> None:
        """The store answered: no more back-off."""
        if not self._stats.available and self._stats.store_failures:
            log.info("trace store is back")
        self._stats.available = True
        self.backoff = 0.0

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
