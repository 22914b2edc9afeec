"""``weir bench embed``: an embedding pipeline with and without the micro-batcher.

A local embedding endpoint (its own process) behaves like a GPU server: every
call costs a fixed ``overhead_ms`` plus ``per_item_ms`` per text, at most
``endpoint_concurrency`` calls are computed at once (the rest queue), and a call
with more than ``max_batch`` texts is refused.  Against it, in one run:

* **direct**: the driver calls the endpoint itself with full batches, as many at
  once as it computes plus as many queued: the endpoint's own maximum.
* **batched**: a ``Worker`` process whose one step embeds its request's texts
  through an ``EmbeddingBatcher``; all requests are produced at once (a burst the
  endpoint needs tens of seconds for, far over 10x its rate), end to end from the
  first send to the last result read.  Peak RSS (``VmHWM``) against the RSS after
  warm-up says whether lag or memory absorbed the burst.
* **per item**: the same pipeline, each text its own call (``ModelEndpoint.embed``),
  on ``per_item_texts`` texts (at this rate the full set would take many minutes).

Child processes: ``python -m weir.bench_embed server|worker ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from weir.bench_measures import ResultReader, broker, peak_rss_mb, process_cpu_s
from weir.bench_systems import PARTITIONS

__all__ = ["EmbedBenchConfig", "EmbedFigures", "run_embed_bench"]

_READY = "weir-bench-ready"


@dataclass
class EmbedBenchConfig:
    texts: int = 100_000
    texts_per_request: int = 10
    per_item_texts: int = 2_000
    overhead_ms: float = 20.0
    per_item_ms: float = 0.5
    max_batch: int = 256
    endpoint_concurrency: int = 2
    max_wait_ms: float = 20.0
    batch_calls_in_flight: int = 4
    bootstrap: str | None = None
    timeout_s: float = 900.0


@dataclass
class EmbedFigures:
    direct_items_s: float
    batched_items_s: float
    batched_seconds: float
    batched_calls: int
    batched_mean_batch: float
    per_item_items_s: float
    per_item_texts: int
    rss_after_warmup_mb: float
    rss_peak_mb: float
    batched_worker_cpu_s: float
    """CPU seconds the worker used in the batched run (it bounds texts/s on a busy machine)."""

    @property
    def batched_vs_per_item(self) -> float:
        return self.batched_items_s / self.per_item_items_s

    @property
    def batched_vs_direct(self) -> float:
        return self.batched_items_s / self.direct_items_s


def short_text(i: int) -> str:
    return f"chunk {i} of document {i // 10}: a short passage about topic {i % 97}"


# -- the endpoint ----------------------------------------------------------------------


async def _server_child(cfg: EmbedBenchConfig) -> None:
    from aiohttp import web

    compute = asyncio.Semaphore(cfg.endpoint_concurrency)
    stats = {"calls": 0, "items": 0, "refused": 0}

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if len(inputs) > cfg.max_batch:
            stats["refused"] += 1
            error = {"message": f"at most {cfg.max_batch} inputs", "type": "invalid_request"}
            return web.json_response({"error": error}, status=413)
        async with compute:
            await asyncio.sleep((cfg.overhead_ms + cfg.per_item_ms * len(inputs)) / 1000)
        stats["calls"] += 1
        stats["items"] += len(inputs)
        data = [
            {"index": i, "embedding": [len(t) / 100, (hash(t) % 1000) / 1000, 0.5, 0.25]}
            for i, t in enumerate(inputs)
        ]
        words = sum(len(t.split()) for t in inputs)
        usage = {"prompt_tokens": words, "total_tokens": words}
        return web.json_response({"model": body["model"], "data": data, "usage": usage})

    async def read_stats(request: web.Request) -> web.Response:
        if request.method == "POST":
            stats.update(calls=0, items=0, refused=0)
        return web.json_response(stats)

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_route("*", "/stats", read_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print(f"{_READY} {port}", flush=True)
    await stopping.wait()
    await runner.cleanup()


# -- the worker ------------------------------------------------------------------------


async def _worker_child(
    name: str, bootstrap: str, url: str, mode: str, cfg: EmbedBenchConfig
) -> None:
    from weir.core.config import load_settings
    from weir.processors import (
        EmbeddingBatcher,
        Limits,
        ModelEndpoint,
        ModelServices,
        OpenAICompatible,
        Price,
    )
    from weir.streams.pipeline import Pipeline
    from weir.streams.worker import Worker

    settings = load_settings(kafka_bootstrap=bootstrap, partitions=PARTITIONS)
    endpoint = ModelEndpoint(
        "bench-emb",
        provider=OpenAICompatible(url),
        price=Price.per_million(input="0.02"),
        limits=Limits(max_concurrency=cfg.batch_calls_in_flight),
        queue_timeout_s=cfg.timeout_s,
        timeout_s=cfg.timeout_s,
    )
    batcher = EmbeddingBatcher(
        endpoint,
        max_batch_items=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
        max_in_flight=cfg.batch_calls_in_flight,
    )
    p = Pipeline(name)
    if mode == "batched":

        @p.step()
        async def embed(texts: list[str]) -> list[list[float]]:
            return (await batcher.embed(texts)).vectors

    else:

        @p.step()
        async def embed(texts: list[str]) -> list[list[float]]:
            answers = await asyncio.gather(*(endpoint.embed([t]) for t in texts))
            return [a.vectors[0] for a in answers]

    worker = Worker(p, settings, services=ModelServices(settings))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.request_stop)
    await worker.start()
    print(_READY, flush=True)
    await worker.run()


# -- the driver ------------------------------------------------------------------------


async def _spawn(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "weir.bench_embed",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if not os.environ.get("WEIR_BENCH_DEBUG") else None,
        env=env,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"bench child {args[0]} exited before it was ready")
            if line.startswith(_READY):
                return proc, line[len(_READY) :].strip()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child_flags(cfg: EmbedBenchConfig) -> list[str]:
    return [f"--config={json.dumps(asdict(cfg))}"]


async def _direct(url: str, cfg: EmbedBenchConfig, texts: int) -> float:
    """Items/s calling the endpoint with full batches, enough at once to keep it busy."""
    import httpx

    batches = [
        [short_text(i) for i in range(start, min(texts, start + cfg.max_batch))]
        for start in range(0, texts, cfg.max_batch)
    ]
    queue = iter(batches)
    async with httpx.AsyncClient(base_url=url, timeout=cfg.timeout_s) as http:

        async def caller() -> None:
            for batch in queue:
                answer = await http.post("/embeddings", json={"model": "m", "input": batch})
                answer.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(cfg.batch_calls_in_flight)))
        return texts / (time.perf_counter() - start)


async def _pipeline_run(
    bootstrap: str,
    url: str,
    mode: str,
    cfg: EmbedBenchConfig,
    texts: int,
    progress: Callable[[int], None],
) -> tuple[float, float, float, float, float]:
    """(seconds, items/s, RSS after warm-up, peak RSS, worker CPU s) of ``texts`` texts."""
    from aiokafka import AIOKafkaProducer

    from weir.topics.names import PipelineTopics

    name = f"bench-embed-{mode}-{uuid.uuid4().hex[:6]}"
    topics = PipelineTopics(name)
    worker, _ = await _spawn("worker", name, bootstrap, url, mode, *_child_flags(cfg))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    reader = ResultReader(bootstrap, topics.results)
    await reader.start()
    per = cfg.texts_per_request
    try:
        run = uuid.uuid4().hex[:6]

        def request(i: int, start: int, n: int) -> tuple[bytes, bytes]:
            rid = f"{run}-{i}"
            payload = {"texts": [short_text(j) for j in range(start, start + n)]}
            return rid.encode(), json.dumps({"request_id": rid, "payload": payload}).encode()

        # Warm-up: one request through (the group has joined, the HTTP pool is open).
        reader.expect(1)
        key, value = request(-1, 0, per)
        await producer.send_and_wait(topics.requests, value, key=key)
        await reader.done.wait()
        await asyncio.sleep(1.0)
        rss_before = _rss_mb(worker.pid)
        count = (texts + per - 1) // per
        reader.expect(count)
        reader.on_arrival = lambda n: progress(n * per)
        cpu0 = process_cpu_s(worker.pid)
        start = time.perf_counter()
        futures = []
        for i in range(count):
            key, value = request(i, i * per, min(per, texts - i * per))
            futures.append(await producer.send(topics.requests, value, key=key))
        await asyncio.gather(*futures)
        async with asyncio.timeout(cfg.timeout_s):
            await reader.done.wait()
        seconds = time.perf_counter() - start
        cpu = process_cpu_s(worker.pid) - cpu0
        return seconds, texts / seconds, rss_before, peak_rss_mb(worker.pid), cpu
    finally:
        await reader.stop()
        await producer.stop()
        await _stop(worker)


async def _stats(url: str, *, reset: bool = False) -> dict[str, int]:
    import httpx

    async with httpx.AsyncClient() as http:
        answer = await (http.post if reset else http.get)(url.removesuffix("/v1") + "/stats")
        return dict(answer.json())


def run_embed_bench(
    cfg: EmbedBenchConfig,
    *,
    progress: Callable[[int], None] = lambda n: None,
    status: Callable[[str], None] = lambda s: None,
) -> EmbedFigures:
    """Start (or use) a broker and the endpoint; measure direct, batched and per-item."""
    with broker(cfg.bootstrap) as (bootstrap, _pid):

        async def main() -> EmbedFigures:
            server, port = await _spawn("server", *_child_flags(cfg))
            url = f"http://127.0.0.1:{port}/v1"
            try:
                status("direct calls with full batches")
                direct = await _direct(url, cfg, min(cfg.texts, 50_000))
                progress(0)
                status(f"batched: {cfg.texts} texts through a worker")
                await _stats(url, reset=True)
                seconds, batched, rss0, rss1, cpu = await _pipeline_run(
                    bootstrap, url, "batched", cfg, cfg.texts, progress
                )
                calls = await _stats(url)
                if calls["items"] < cfg.texts:
                    # Failed results count as arrivals too: a figure without the calls is void.
                    raise RuntimeError(
                        f"the endpoint embedded {calls['items']} of {cfg.texts} texts: the"
                        " worker's calls failed (run with WEIR_BENCH_DEBUG=1 to see its log)"
                    )
                status(f"per item: {cfg.per_item_texts} texts through a worker")
                _, single, _, _, _ = await _pipeline_run(
                    bootstrap, url, "per-item", cfg, cfg.per_item_texts, progress
                )
            finally:
                await _stop(server)
            return EmbedFigures(
                direct_items_s=round(direct, 1),
                batched_items_s=round(batched, 1),
                batched_seconds=round(seconds, 2),
                # The warm-up request's call is counted too.
                batched_calls=calls["calls"],
                batched_mean_batch=round(calls["items"] / max(1, calls["calls"]), 1),
                per_item_items_s=round(single, 1),
                per_item_texts=cfg.per_item_texts,
                rss_after_warmup_mb=round(rss0, 1),
                rss_peak_mb=round(rss1, 1),
                batched_worker_cpu_s=round(cpu, 2),
            )

        return asyncio.run(main())


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m weir.bench_embed")
    parser.add_argument("kind", choices=["server", "worker"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    cfg = EmbedBenchConfig(**json.loads(args.config))
    with contextlib.suppress(KeyboardInterrupt):
        if args.kind == "server":
            asyncio.run(_server_child(cfg))
        else:
            name, bootstrap, url, mode = args.rest
            asyncio.run(_worker_child(name, bootstrap, url, mode, cfg))


def as_dict(figures: EmbedFigures) -> dict[str, Any]:
    return asdict(figures) | {
        "batched_vs_per_item": round(figures.batched_vs_per_item, 2),
        "batched_vs_direct": round(figures.batched_vs_direct, 3),
        "rss_growth_mb": round(figures.rss_peak_mb - figures.rss_after_warmup_mb, 1),
    }


if __name__ == "__main__":
    _child_main(sys.argv[1:])
