"""Endpoints a module defines, by name: a replay's candidate, an embedding scorer's endpoint.

Endpoints are found where users define them, as module-level names (an endpoint, or a
router whose rules name endpoints), with their fallbacks; nothing is registered globally.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from weir.core.errors import ConfigError
from weir.processors.endpoint import ModelEndpoint
from weir.processors.router import Router
from weir.streams.pipeline import Pipeline

__all__ = ["candidate_endpoint", "candidate_function", "endpoints_of", "pipeline_modules"]


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


def candidate_endpoint(
    name: str, pipeline: Pipeline, given: Iterable[ModelEndpoint]
) -> ModelEndpoint:
    """The endpoint ``name`` among the pipeline module's and ``given``; ``ConfigError`` if none."""
    defined = endpoints_of(pipeline_modules(pipeline))
    defined.update({ep.name: ep for ep in given})
    found = defined.get(name)
    if found is None:
        known = ", ".join(sorted(defined)) or "none"
        raise ConfigError(
            f"no endpoint named {name!r} is defined by the pipeline's module (defined: {known});"
            " define the candidate next to the pipeline, or use --variant module:function"
        )
    return found


def candidate_function(ref: str) -> Callable[..., Any]:
    """The function ``module.path:function`` (a replay's variant); ``ConfigError`` if none."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--variant {ref!r} is not a function reference; use 'module.path:function'"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--variant {ref!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"--variant {ref!r} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]
