"""Endpoints a module defines, by name: a replay's candidate, an embedding scorer's endpoint.

Endpoints are found where users define them, as module-level names (an endpoint, or a
router whose rules name endpoints), with their fallbacks; nothing is registered globally.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import ModuleType

from weir.processors.endpoint import ModelEndpoint
from weir.processors.router import Router
from weir.streams.pipeline import Pipeline

__all__ = ["endpoints_of", "pipeline_modules"]


def endpoints_of(modules: Iterable[ModuleType]) -> dict[str, ModelEndpoint]:
    """Every endpoint the ``modules`` define at module level (and their fallbacks), by name."""
    found: dict[str, ModelEndpoint] = {}

    def add(endpoint: ModelEndpoint) -> None:
        if endpoint.name not in found:
            found[endpoint.name] = endpoint
            for fallback in endpoint.fallbacks:
                add(fallback)

    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, ModelEndpoint):
                add(value)
            elif isinstance(value, Router):
                for endpoint in value.endpoints.values():
                    add(endpoint)
    return found


def pipeline_modules(pipeline: Pipeline) -> list[ModuleType]:
    """The modules that define ``pipeline``'s step functions."""
    names = {step.fn.__module__ for step in pipeline.steps.values()}
    return [sys.modules[name] for name in sorted(names) if name in sys.modules]
