"""Finding a ``Pipeline`` from a ``module:attribute`` reference."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from weir.core.errors import UnknownPipelineError
from weir.streams.pipeline import Pipeline

if TYPE_CHECKING:
    from weir.processors.router import Router

__all__ = ["load_pipeline", "routers_of"]


def load_pipeline(ref: str, *, search_path: Path | None = None) -> Pipeline:
    """Import ``package.module:attribute`` and return the validated pipeline it names.

    ``search_path`` (the caller's working directory, for the CLI) is put on
    ``sys.path`` first so that pipelines in a project directory are found.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownPipelineError(
            f"{ref!r} is not a pipeline reference; use 'module.path:attribute',"
            " e.g. 'examples.customer_support:pipeline'"
        )
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownPipelineError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise UnknownPipelineError(f"module {module_name!r} has no attribute {attr!r}") from exc
    if not isinstance(obj, Pipeline):
        raise UnknownPipelineError(f"{ref} is a {type(obj).__name__}, not a weir Pipeline")
    return obj.validate()


def routers_of(ref: str) -> dict[str, Router]:
    """The routers the module of a loaded pipeline ``ref`` holds at its top level, by name."""
    if "weir.processors.router" not in sys.modules:
        return {}  # the pipeline's code never imported routing
    from weir.processors.router import Router

    module = sys.modules[ref.partition(":")[0]]
    return {v.name: v for v in vars(module).values() if isinstance(v, Router)}
