"""What a worker starts and stops with itself for the layers above the runtime.

The runtime knows nothing of models; the model layer's state (settings in force,
secret cache, breakers, route watcher, cost ledger) is created by the layer that
creates the worker (``weir worker`` makes a ``weir.processors.ModelServices``)
and handed to it, so that two workers in one process share nothing.  The worker
starts it before it takes work, makes it reachable to steps as
``current_scope().services``, and stops it once its work is done.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["WorkerServices"]


class WorkerServices(Protocol):
    """Services a worker owns: started before it consumes, stopped after it drained."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
