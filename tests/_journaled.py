"""A pipeline whose step holds on after its model call: where a crash costs a second call.

Subprocess workers read the pipeline's name from ``WEIR_TEST_PIPELINE``, the model
server's URL from ``WEIR_TEST_MODEL_URL`` and how long the step waits after its call
from ``WEIR_TEST_HOLD_S``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from weir.processors import ModelEndpoint, OpenAICompatible, Price
from weir.streams import NO_RETRY, Pipeline

PRICE = Price.per_million(input="0.15", output="0.60")


def journaled(name: str, url: str, hold_s: float) -> Pipeline:
    llm = ModelEndpoint(f"{name}-llm", provider=OpenAICompatible(url), price=PRICE, breaker=None)
    p = Pipeline(name, retry=NO_RETRY)

    @p.step()
    async def answer(text: str) -> dict[str, Any]:
        first = await llm.chat([{"role": "user", "content": text}])
        second = await llm.stream_chat([{"role": "user", "content": f"again {text}"}]).collect()
        await asyncio.sleep(hold_s)  # between the calls and the output: where the kill lands
        return {"first": first.text, "second": second.text}

    return p


pipeline = journaled(
    os.environ.get("WEIR_TEST_PIPELINE", "journaled"),
    os.environ.get("WEIR_TEST_MODEL_URL", "http://127.0.0.1:9/v1"),
    float(os.environ.get("WEIR_TEST_HOLD_S", "0")),
)
