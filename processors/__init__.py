"""Reusable step processors: model endpoints, routing, budgets, streaming, transforms,
and the trace sink.

Step processors are step bodies that pipelines plug in with ``add_step`` or call
from a step (``ModelEndpoint``, ``Router``); ``ClickHouseSink`` and ``TraceStore``
move trace events into ClickHouse and read them back (``weir sink``, ``weir
trace``, ``weir stats``, the dashboard).

>>> from weir.streams import Pipeline
>>> from weir.processors import Transform
>>> p = Pipeline("words")
>>> step = p.add_step("split", Transform(lambda text: text.split()))
>>> step.inline
True

A model endpoint is defined once and called from steps; its key is a secret
reference, resolved at call time:

>>> from weir.processors import ModelEndpoint, OpenAICompatible, Price
>>> llm = ModelEndpoint(
...     "support-mini",
...     provider=OpenAICompatible("http://127.0.0.1:8000/v1", api_key="env:LLM_KEY"),
...     model="gpt-4o-mini",
... )
>>> llm.price() == Price.per_million(input="0.15", output="0.60")
True
"""

from weir.processors._env import aclose_model_layer
from weir.processors.budget import Budget
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker, circuit_states
from weir.processors.clickhouse_sink import ClickHouseSink
from weir.processors.cost import DEFAULT_PRICES, Price, format_usd
from weir.processors.endpoint import ChatStream, ModelEndpoint, endpoint_states
from weir.processors.limits import Limits
from weir.processors.providers import Anthropic, LocalModel, OpenAICompatible, Provider
from weir.processors.results import ChatResult, Classification, Embeddings, StreamEvent, Usage
from weir.processors.router import Router, Rule, RuleSet
from weir.processors.shadow import Shadow
from weir.processors.streaming import TokenChunk, TokenStream
from weir.processors.trace_store import TraceStore
from weir.processors.transform import Transform

__all__ = [
    "DEFAULT_PRICES",
    "Anthropic",
    "BreakerPolicy",
    "Budget",
    "ChatResult",
    "ChatStream",
    "CircuitBreaker",
    "Classification",
    "ClickHouseSink",
    "Embeddings",
    "Limits",
    "LocalModel",
    "ModelEndpoint",
    "OpenAICompatible",
    "Price",
    "Provider",
    "Router",
    "Rule",
    "RuleSet",
    "Shadow",
    "StreamEvent",
    "TokenChunk",
    "TokenStream",
    "TraceStore",
    "Transform",
    "Usage",
    "aclose_model_layer",
    "circuit_states",
    "endpoint_states",
    "format_usd",
]
