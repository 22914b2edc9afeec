"""Pipelines for the observability tests: injected failures, a slow step, model calls.

Subprocess workers read their pipeline's name from ``WEIR_TEST_PIPELINE`` and the
request that should be slow from ``WEIR_TEST_SLOW_REQUEST``.
"""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal

from weir.core.errors import ModelTimeoutError, ModelUnavailableError
from weir.schemas.messages import ModelCall, now_ms
from weir.streams import Pipeline, RetryPolicy, StepContext
from weir.streams.context import current_scope

RETRY = RetryPolicy(initial_interval=0.05, maximum_attempts=3, jitter=0.0)
MODELS = (
    ("gpt-4o-mini", "openai", Decimal("0.0000006")),
    ("claude-haiku", "anthropic", Decimal("0.000001")),
)


def _record(step: str, ctx: StepContext, n: int, started: int, status: str = "SUCCESS") -> None:
    """What a model processor would record for the call this step stands in for."""
    model, provider, price = MODELS[n % 2]
    tokens_in, tokens_out = 100 + n % 50, 20 + n % 7
    scope = current_scope()
    assert scope is not None
    scope.record(
        ModelCall(
            step=step,
            attempt=ctx.attempt,
            endpoint=f"{provider}-main",
            provider=provider,
            model=model,
            operation="chat",
            status=status,  # type: ignore[arg-type]
            started_at=started,
            duration_ms=float(now_ms() - started),
            input_tokens=tokens_in,
            output_tokens=tokens_out if status == "SUCCESS" else 0,
            cost_usd=price * (tokens_in + tokens_out) if status == "SUCCESS" else Decimal(0),
            error_type=None if status == "SUCCESS" else "model_timeout",
            rule="default",
        )
    )


def flaky(name: str, *, slow_request: str | None = None, slow_s: float = 0.0) -> Pipeline:
    """fetch -> generate -> deliver, failing on purpose:

    * fetch: the first attempt of every n % 25 == 0 fails (model_unavailable);
    * generate: the first attempt of every n % 10 == 0 times out (model_timeout);
      every n % 100 == 7 always times out (3 attempts, then dead-lettered);
    * generate sleeps ``slow_s`` for ``slow_request``.
    """
    p = Pipeline(name, retry=RETRY)

    @p.step()
    async def fetch(n: int, ctx: StepContext) -> int:
        if n % 25 == 0 and ctx.attempt == 1:
            raise ModelUnavailableError("retriever answered 503")
        await asyncio.sleep(0.001)
        return n

    @p.step(depends_on=[fetch])
    async def generate(fetch: int, ctx: StepContext) -> dict[str, object]:
        n = fetch
        started = now_ms()
        if ctx.request_id == slow_request:
            await asyncio.sleep(slow_s)
        if n % 100 == 7 or (n % 10 == 0 and ctx.attempt == 1):
            await asyncio.sleep(0.01 + (n % 3) * 0.005)
            _record("generate", ctx, n, started, status="FAILURE")
            raise ModelTimeoutError(f"llm-main did not answer in time (request {n})")
        await asyncio.sleep(0.002)
        _record("generate", ctx, n, started)
        return {"n": n, "text": f"answer {n}"}

    @p.step(depends_on=[generate], log_io=True)
    def deliver(generate: dict[str, object], request: dict[str, object]) -> str:
        time.sleep(0.0005)
        return f"sent {generate['text']} to {request['email']}"

    return p


def expected_attempts(n: int) -> dict[str, int]:
    """Attempts per step of ``flaky`` for requests 0..n-1."""
    fetch = n + sum(1 for i in range(n) if i % 25 == 0)
    always = sum(1 for i in range(n) if i % 100 == 7)
    once = sum(1 for i in range(n) if i % 10 == 0)
    generate = (n - always - once) + 2 * once + RETRY.maximum_attempts * always
    return {"fetch": fetch, "generate": generate, "deliver": n - always}


def slow_step(name: str, *, slow_request: str | None = None, slow_s: float = 0.0) -> Pipeline:
    """parse -> enrich -> answer; ``enrich`` sleeps ``slow_s`` for ``slow_request`` only."""
    p = Pipeline(name)

    @p.step()
    async def parse(text: str) -> list[str]:
        await asyncio.sleep(0.01)
        return text.split()

    @p.step(depends_on=[parse])
    async def enrich(parse: list[str], ctx: StepContext) -> dict[str, object]:
        await asyncio.sleep(slow_s if ctx.request_id == slow_request else 0.01)
        return {"words": len(parse)}

    @p.step(depends_on=[enrich])
    async def answer(enrich: dict[str, object]) -> str:
        await asyncio.sleep(0.01)
        return f"{enrich['words']} words"

    return p


_NAME = os.environ.get("WEIR_TEST_PIPELINE", "test-traced")
flaky_pipeline = flaky(_NAME)
slow_pipeline = slow_step(
    _NAME,
    slow_request=os.environ.get("WEIR_TEST_SLOW_REQUEST"),
    slow_s=float(os.environ.get("WEIR_TEST_SLOW_S", "0")),
)
