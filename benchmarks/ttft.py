"""Time to first token: what one streaming weir step adds over calling the model directly.

A local OpenAI-compatible server (``tests/_model_servers.py``) streams a 30-word
answer, its first token ``--think-ms`` after the request (the model's own
time to first token).  Measured in the same run, one request at a time:

* **direct** — an httpx streaming POST to the server; TTFT = request sent to the
  first content delta read.
* **endpoint** — ``ModelEndpoint.stream_chat`` outside a worker (the model layer's
  own overhead: key resolution, limits, breaker, parsing).
* **weir** — a pipeline with one streaming step; the client opens
  ``WeirClient.stream(request_id)`` first, then submits; TTFT = submit to the
  first token read from the stream topic.  The path: requests topic -> ingress ->
  step topic -> step -> model -> stream topic -> client.

    python benchmarks/ttft.py [--requests N] [--think-ms MS] [--bootstrap host:port] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.linear import broker_settings, percentile
from tests._model_servers import ModelServer
from weir.core.config import WeirSettings
from weir.processors import ModelEndpoint, ModelServices, OpenAICompatible
from weir.streams.client import WeirClient
from weir.streams.pipeline import Pipeline
from weir.streams.worker import Worker

MESSAGES = [{"role": "user", "content": "tell me about my card"}]
ANSWER = " ".join(f"word{i}" for i in range(30))


async def direct(server: ModelServer, n: int) -> list[float]:
    out = []
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.stream("POST", server.url + "/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"content"' in line:
                        out.append((time.perf_counter() - t0) * 1000)
                        break
    return out


async def endpoint_only(server: ModelServer, n: int) -> list[float]:
    llm = ModelEndpoint("bench-direct", provider=OpenAICompatible(server.url), breaker=None)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        stream = llm.stream_chat(MESSAGES)
        async for _event in stream:
            out.append((time.perf_counter() - t0) * 1000)
            break
        await stream.aclose()
    return out


async def through_weir(
    settings: WeirSettings, server: ModelServer, n: int
) -> tuple[list[float], list[float]]:
    llm = ModelEndpoint("bench-weir", provider=OpenAICompatible(server.url), breaker=None)
    p = Pipeline(f"bench-ttft-{uuid.uuid4().hex[:6]}")

    @p.step()
    async def answer(text: str) -> str:
        return (await llm.stream_chat([{"role": "user", "content": text}]).collect()).text

    ttft: list[float] = []
    model_ttft: list[float] = []
    async with (
        Worker(p, settings, services=ModelServices(settings)),
        WeirClient(settings) as client,
    ):
        warm = await client.submit(p.name, {"text": "warm up"})
        await client.wait_for(p.name, [warm], timeout=60)
        for i in range(n):
            rid = uuid.uuid4().hex
            async with client.stream(rid, pipeline=p.name, idle_timeout=30) as chunks:
                t0 = time.perf_counter()
                await client.submit(p.name, {"text": f"tell me about my card {i}"}, request_id=rid)
                async for chunk in chunks:
                    if chunk.kind == "delta":
                        ttft.append((time.perf_counter() - t0) * 1000)
                        break
            result = (await client.wait_for(p.name, [rid], timeout=60))[rid]
            model_ttft += [c.ttft_ms for c in result.model_calls() if c.ttft_ms is not None]
    return ttft, model_ttft


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
    }


async def main_async(args: argparse.Namespace, settings: WeirSettings) -> dict[str, Any]:
    server = await ModelServer("bench").start()
    server.behaviour.latency_s = args.think_ms / 1000
    server.behaviour.chunk_delay_s = 0.005
    server.behaviour.reply = lambda text: ANSWER
    try:
        await direct(server, 5)  # warm-up: connections, imports
        direct_ms = await direct(server, args.requests)
        async with ModelServices(settings):
            endpoint_ms = await endpoint_only(server, args.requests)
        weir_ms, model_ms = await through_weir(settings, server, args.requests)
    finally:
        await server.stop()
    report = {
        "requests": args.requests,
        "think_ms": args.think_ms,
        "direct": stats(direct_ms),
        "endpoint": stats(endpoint_ms),
        "weir": stats(weir_ms),
        "weir_model_ttft_seen_by_worker": stats(model_ms),
    }
    report["added_by_weir_p50_ms"] = round(report["weir"]["p50"] - report["direct"]["p50"], 2)
    report["added_by_model_layer_p50_ms"] = round(
        report["endpoint"]["p50"] - report["direct"]["p50"], 2
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--think-ms", type=float, default=50.0)
    parser.add_argument("--bootstrap", help="existing Kafka (default: start a local broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with broker_settings(args.bootstrap) as settings:
        report = asyncio.run(main_async(args, settings))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"TTFT over {args.requests} sequential requests, model think time {args.think_ms} ms")
    print(f"{'path':<34} {'p50':>8} {'p90':>8} {'p99':>8}")
    for key in ("direct", "endpoint", "weir", "weir_model_ttft_seen_by_worker"):
        s = report[key]
        print(f"{key:<34} {s['p50']:>8} {s['p90']:>8} {s['p99']:>8}")
    print(f"added by weir (p50): {report['added_by_weir_p50_ms']} ms")


if __name__ == "__main__":
    main()
