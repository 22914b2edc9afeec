"""A pipeline for ``weir worker`` subprocesses: one call per request under a shared limit.

Configured by the test through the environment: ``WEIR_TEST_PIPELINE``,
``WEIR_TEST_MODEL_URL`` and ``WEIR_TEST_RPM`` (the pipeline's requests/min).
"""

from __future__ import annotations

import os

from weir.processors import Limits, ModelEndpoint, OpenAICompatible
from weir.streams import Pipeline

_endpoint = ModelEndpoint(
    "shared-limit",
    provider=OpenAICompatible(os.environ.get("WEIR_TEST_MODEL_URL", "http://127.0.0.1:1/v1")),
    limits=Limits(requests_per_minute=int(os.environ.get("WEIR_TEST_RPM", "60"))),
    queue_timeout_s=600,
    timeout_s=600,
)
pipeline = Pipeline(os.environ.get("WEIR_TEST_PIPELINE", "limit-pipeline"))


@pipeline.step(timeout=600)
async def embed(text: str) -> int:
    return len((await _endpoint.embed([text])).vectors)
