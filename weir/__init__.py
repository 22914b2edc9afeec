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
    from weir.core.config import WeirSettings, load_settings
    from weir.core.errors import WeirError
    from weir.local import run_local
    from weir.processors import (
        Anthropic,
        Budget,
        LocalModel,
        ModelEndpoint,
        OpenAICompatible,
        Price,
        Router,
        Rule,
    )
    from weir.streams import (
        Branch,
        Cache,
        Conversation,
        Escalate,
        History,
        Pipeline,
        StepContext,
        SyncWeirClient,
        WeirClient,
        any_of,
    )
    from weir.worker import Worker

__all__ = [
    "Anthropic",
    "Branch",
    "Budget",
    "Cache",
    "Conversation",
    "Escalate",
    "History",
    "LocalModel",
    "ModelEndpoint",
    "OpenAICompatible",
    "Pipeline",
    "Price",
    "Router",
    "Rule",
    "StepContext",
    "SyncWeirClient",
    "WeirClient",
    "WeirError",
    "WeirSettings",
    "Worker",
    "any_of",
    "load_settings",
    "run_local",
]

# Resolved on first use, not for want of a layer order (there is no cycle: see
# tests/test_layers.py) but for speed: every `import weir.<layer>` runs this file first,
# and importing the runtime and the model layer here would make `import weir.core.errors`
# (and every CLI command) load Kafka, OpenTelemetry and the providers: 30x the CPU time.
_HOME = {
    "Branch": "weir.streams",
    "Cache": "weir.streams",
    "Conversation": "weir.streams",
    "Escalate": "weir.streams",
    "History": "weir.streams",
    "Pipeline": "weir.streams",
    "StepContext": "weir.streams",
    "SyncWeirClient": "weir.streams",
    "WeirClient": "weir.streams",
    "Worker": "weir.worker",
    "any_of": "weir.streams",
    "run_local": "weir.local",
    "WeirSettings": "weir.core.config",
    "load_settings": "weir.core.config",
    "WeirError": "weir.core.errors",
    "Anthropic": "weir.processors",
    "Budget": "weir.processors",
    "LocalModel": "weir.processors",
    "ModelEndpoint": "weir.processors",
    "OpenAICompatible": "weir.processors",
    "Price": "weir.processors",
    "Router": "weir.processors",
    "Rule": "weir.processors",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'weir' has no attribute {name!r}")
