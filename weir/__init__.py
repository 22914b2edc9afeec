"""weir: Kafka-native AI orchestration.

Pipelines are plain Python functions; each step runs as a stream processor on
Apache Kafka.

>>> import weir
>>> p = weir.Pipeline("hello")
>>> @p.step()
... def greet(name: str) -> str:
...     return f"hello {name}"
>>> p.validate().final_steps
('greet',)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from processors import (
        Anthropic,
        Budget,
        LocalModel,
        ModelEndpoint,
        OpenAICompatible,
        Price,
        Router,
        Rule,
    )
    from streams import Branch, Pipeline, StepContext, WeirClient, Worker, any_of
    from streams.local import run_local
    from weir.config import WeirSettings, load_settings
    from weir.errors import WeirError

__all__ = [
    "Anthropic",
    "Branch",
    "Budget",
    "LocalModel",
    "ModelEndpoint",
    "OpenAICompatible",
    "Pipeline",
    "Price",
    "Router",
    "Rule",
    "StepContext",
    "WeirClient",
    "WeirError",
    "WeirSettings",
    "Worker",
    "any_of",
    "load_settings",
    "run_local",
]

# Resolved on first use: the packages below import weir.errors and weir.config,
# so importing them here eagerly would be circular.
_HOME = {
    "Branch": "streams",
    "Pipeline": "streams",
    "StepContext": "streams",
    "WeirClient": "streams",
    "Worker": "streams",
    "any_of": "streams",
    "run_local": "streams.local",
    "WeirSettings": "weir.config",
    "load_settings": "weir.config",
    "WeirError": "weir.errors",
    "Anthropic": "processors",
    "Budget": "processors",
    "LocalModel": "processors",
    "ModelEndpoint": "processors",
    "OpenAICompatible": "processors",
    "Price": "processors",
    "Router": "processors",
    "Rule": "processors",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'weir' has no attribute {name!r}")
