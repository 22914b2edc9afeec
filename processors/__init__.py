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

from weir.processors.batcher import Batching, EmbeddingBatcher
from weir.processors.budget import Budget
from weir.processors.chat_stream import ChatStream
from weir.processors.circuit_breaker import BreakerPolicy, CircuitBreaker
from weir.processors.cost import DEFAULT_PRICES, Price, format_usd
from weir.processors.endpoint import ModelEndpoint
from weir.processors.limits import Limits
from weir.processors.providers import Anthropic, LocalModel, OpenAICompatible, Provider
from weir.processors.results import (
    ChatResult,
    Classification,
    Embeddings,
    GeneratedImage,
    Images,
    StreamEvent,
    Transcription,
    Usage,
)
from weir.processors.router import Router, Rule
from weir.processors.rules import RuleSet
from weir.processors.services import ModelServices
from weir.processors.shadow import Shadow
from weir.processors.transform import Transform
from weir.streams.tokens import TokenChunk, TokenStream

__all__ = [
    "DEFAULT_PRICES",
    "Anthropic",
    "Batching",
    "BreakerPolicy",
    "Budget",
    "ChatResult",
    "ChatStream",
    "CircuitBreaker",
    "Classification",
    "EmbeddingBatcher",
    "Embeddings",
    "GeneratedImage",
    "Images",
    "Limits",
    "LocalModel",
    "ModelEndpoint",
    "ModelServices",
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
    "Transcription",
    "Transform",
    "Usage",
    "format_usd",
]
