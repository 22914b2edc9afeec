"""Reusable step processors and the model layer: model endpoints, routing, budgets,
streaming, transforms.

Step processors are step bodies that pipelines plug in with ``add_step`` or call
from a step (``ModelEndpoint``, ``Router``).  The trace store and its sink live
one layer up, in ``weir.traces``.

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
from weir.processors.chat_stream import ChatStream
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker, circuit_states
from weir.processors.cost import DEFAULT_PRICES, Price, format_usd
from weir.processors.endpoint import ModelEndpoint, endpoint_states
from weir.processors.limits import Limits
from weir.processors.providers import Anthropic, LocalModel, OpenAICompatible, Provider
from weir.processors.results import ChatResult, Classification, Embeddings, StreamEvent, Usage
from weir.processors.router import Router
from weir.processors.rules import Rule, RuleSet
from weir.processors.streaming import TokenChunk, TokenStream
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
    "StreamEvent",
    "TokenChunk",
    "TokenStream",
    "Transform",
    "Usage",
    "aclose_model_layer",
    "circuit_states",
    "endpoint_states",
    "format_usd",
]
