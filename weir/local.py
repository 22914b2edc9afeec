"""``weir.run_local``: the runtime's in-process runner with model services by default.

``weir.streams.run_local`` uses the model services of the enclosing
``async with ModelServices(...)`` and has none outside one; this one creates
``ModelServices(settings)`` for the run when none is in use, so that
``await weir.run_local(pipeline, payload)`` runs steps that call models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from weir.core.config import WeirSettings, load_settings
from weir.processors.services import ModelServices, services_in_use
from weir.streams.conversation import Turn
from weir.streams.local import run_local as run_in_process
from weir.streams.pipeline import Pipeline

__all__ = ["run_local"]


async def run_local(
    pipeline: Pipeline,
    payload: dict[str, Any],
    *,
    settings: WeirSettings | None = None,
    request_id: str = "local",
    options: dict[str, str] | None = None,
    turns: Sequence[Turn] = (),
) -> tuple[Any, list[str]]:
    """``weir.streams.run_local`` with model services: those in use, else its own.

    Without services in use it creates ``ModelServices(settings)`` for this run
    (``settings`` default: ``load_settings()``, read from the environment) and
    stops them when the run ends.

    >>> import asyncio
    >>> from weir.streams import Pipeline
    >>> p = Pipeline("double")
    >>> @p.step()
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> asyncio.run(run_local(p, {"x": 21}))
    (42, ['double'])
    """
    if services_in_use() is not None:
        return await run_in_process(
            pipeline, payload, request_id=request_id, options=options, turns=turns
        )
    async with ModelServices(settings if settings is not None else load_settings()):
        return await run_in_process(
            pipeline, payload, request_id=request_id, options=options, turns=turns
        )
