"""A pipeline for ``weir worker`` subprocesses: each request is one call under a $1.00 budget.

Configured through ``WEIR_TEST_PIPELINE`` and ``WEIR_TEST_MODEL_URL``; over budget,
requests fail with ``budget_exceeded``; a request served returns its worker's process id.
"""

from __future__ import annotations

import os

from weir.processors import Budget, ModelEndpoint, OpenAICompatible, Price, Router
from weir.streams import Pipeline

_name = os.environ.get("WEIR_TEST_PIPELINE", "budget-pipeline")
_endpoint = ModelEndpoint(
    f"{_name}-pricey",
    provider=OpenAICompatible(os.environ.get("WEIR_TEST_MODEL_URL", "http://127.0.0.1:1/v1")),
    price=Price.per_million(input="2000", output="2000"),
    breaker=None,
)
_router = Router(
    f"{_name}-router",
    default=_endpoint,
    budget=Budget(f"{_name}-budget", limit_usd="1.00", window="day"),
    watch=False,
)
pipeline = Pipeline(_name)


@pipeline.step()
async def answer(text: str) -> int:
    """The id of the worker process that answered."""
    await _router.chat([{"role": "user", "content": text}], max_tokens=32)
    return os.getpid()
