"""A pipeline for ``weir worker`` subprocesses: each request makes one embedding call.

The text sent starts with the worker's process id, so the endpoint can tell the
workers apart.  Configured through ``WEIR_TEST_PIPELINE`` and ``WEIR_TEST_MODEL_URL``.
"""

from __future__ import annotations

import os

from weir.processors import Limits, ModelEndpoint, OpenAICompatible
from weir.streams import Pipeline

_endpoint = ModelEndpoint(
    "paused",
    provider=OpenAICompatible(os.environ.get("WEIR_TEST_MODEL_URL", "http://127.0.0.1:1/v1")),
    limits=Limits(max_concurrency=2),
    queue_timeout_s=600,
    timeout_s=600,
)
pipeline = Pipeline(os.environ.get("WEIR_TEST_PIPELINE", "pause-pipeline"))


@pipeline.step(timeout=600)
async def embed(text: str) -> int:
    return len((await _endpoint.embed([f"{os.getpid()}:{text}"])).vectors)
