"""Step replay throughput by ``--concurrency``: a candidate that takes 50 ms per input.

Records ``--inputs`` requests of a one-step pipeline, then replays them against a
variant that awaits 50 ms (a model call's stand-in) at each concurrency, and prints
inputs replayed per second.  With 50 ms per input, one at a time cannot pass 20/s.

    python benchmarks/replay_concurrency.py [--inputs 400] [--concurrency 1,4,16]
                                            [--bootstrap host:port] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear import broker_settings

from weir.core.config import WeirSettings
from weir.processors.services import ModelServices
from weir.replays import StepReplay
from weir.schemas.messages import now_ms
from weir.streams import Pipeline, WeirClient, Worker

CANDIDATE_S = 0.05
"""What the candidate takes per input."""


async def slow_echo(text: str) -> str:
    """The replay's variant: the step's answer, 50 ms later."""
    await asyncio.sleep(CANDIDATE_S)
    return text


async def main_async(args: argparse.Namespace, settings: WeirSettings) -> dict[str, object]:
    pipeline = Pipeline(f"bench-replay-{uuid.uuid4().hex[:8]}")

    @pipeline.step()
    def echo(text: str) -> str:
        return text

    since = now_ms() - 1000
    worker = Worker(pipeline, settings, services=ModelServices(settings))
    async with worker, WeirClient(settings) as client:
        texts = [{"text": f"input {i}"} for i in range(args.inputs)]
        ids = await client.submit_many(pipeline.name, texts)
        await client.wait_for(pipeline.name, ids, timeout=300)
    rates: dict[str, float] = {}
    for concurrency in args.concurrency:
        job = await StepReplay.create(
            settings,
            pipeline,
            step="echo",
            since_ms=since,
            variant=f"{Path(__file__).stem}:slow_echo",
            concurrency=concurrency,
        )
        t0 = time.perf_counter()
        progress = await job.run()
        seconds = time.perf_counter() - t0
        assert progress.replayed == args.inputs, progress
        rates[str(concurrency)] = round(progress.replayed / seconds, 1)
    return {"inputs": args.inputs, "candidate_s": CANDIDATE_S, "inputs_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=400)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4, 16],
        help="comma-separated, e.g. 1,4,16",
    )
    parser.add_argument("--bootstrap", help="existing Kafka (default: start a local broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with broker_settings(args.bootstrap) as settings:
        figures = asyncio.run(main_async(args, settings))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for concurrency, rate in figures["inputs_per_s"].items():  # type: ignore[attr-defined]
            print(f"--concurrency {concurrency}: {rate} inputs/s")


if __name__ == "__main__":
    main()
