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

from streams import Branch, Pipeline, StepContext, WeirClient, Worker
from weir.config import WeirSettings, load_settings
from weir.errors import WeirError

__all__ = [
    "Branch",
    "Pipeline",
    "StepContext",
    "WeirClient",
    "WeirError",
    "WeirSettings",
    "Worker",
    "load_settings",
]
