"""Throughput with a slow model: one step awaiting a 500 ms call, many requests in flight.

The target is 1,000 requests/s per worker with 500 ms model latency.  Both systems
run the same workload on the same broker in one run:

* raw:  a consumer group on ``in``; every record becomes a task that sleeps 500 ms
  (the "model call") and produces to ``out``; at most ``--in-flight`` tasks at once;
  offsets committed every second for what was produced.  No validation, no
  envelopes, no retries, no exactly-once answers: the floor cost of the workload.
* weir: a pipeline with one async step that sleeps 500 ms; worker and client as
  users run them (requests -> step -> answers -> results).

    python benchmarks/slow_model.py [--requests N] [--latency 0.5] [--in-flight 1000]
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
from typing import Any

from aiokafka import TopicPartition

from weir.core.kafka import KafkaConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear import PARTITIONS, _background, broker_settings

from weir.core.config import WeirSettings
from weir.streams import Pipeline, WeirClient, Worker
from weir.topics._aiokafka import rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec


async def run_raw(settings: WeirSettings, n: int, latency: float, in_flight: int) -> float:
    """Requests per second of the raw loop."""
    prefix = f"bench-slow-raw-{uuid.uuid4().hex[:8]}"
    source, sink = f"{prefix}.in", f"{prefix}.out"
    async with TopicAdmin(settings) as admin:
        await admin.ensure(
            TopicSpec(t, PARTITIONS, 1, {"cleanup.policy": "delete"}) for t in (source, sink)
        )
    bootstrap = settings.bootstrap_servers
    producer = KafkaConnection(bootstrap=bootstrap).producer(acks="all", linger_ms=2)
    await producer.start()
    done = asyncio.Event()
    answered = 0

    async def relay() -> None:
        consumer = KafkaConnection(bootstrap=bootstrap).consumer(
            source,
            group_id=prefix,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        slots = asyncio.Semaphore(in_flight)
        tasks: set[asyncio.Task[None]] = set()
        last_commit = time.monotonic()

        async def handle(value: bytes, key: bytes | None) -> None:
            try:
                await asyncio.sleep(latency)
                await producer.send_and_wait(sink, value=value, key=key)
            finally:
                slots.release()

        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        await slots.acquire()
                        task = asyncio.create_task(handle(record.value, record.key))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                if time.monotonic() - last_commit > 1.0:
                    await consumer.commit()
                    last_commit = time.monotonic()
        finally:
            await consumer.stop()

    async def read() -> None:
        nonlocal answered
        consumer = KafkaConnection(bootstrap=bootstrap).consumer(auto_offset_reset="earliest")
        await consumer.start()
        tps = [TopicPartition(sink, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    answered += len(records)
                    if answered >= n:
                        done.set()
        finally:
            await stop_consumer(consumer)

    try:
        async with _background(relay(), read()):
            started = time.perf_counter()
            futures = [
                await producer.send(source, value=b'{"n": %d}' % i, key=str(i).encode())
                for i in range(n)
            ]
            await asyncio.gather(*futures)
            await asyncio.wait_for(done.wait(), timeout=600)
            return n / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def run_weir(settings: WeirSettings, n: int, latency: float, in_flight: int) -> float:
    """Requests per second through a one-step weir pipeline."""
    name = f"bench-slow-{uuid.uuid4().hex[:8]}"
    p = Pipeline(name)

    @p.step()
    async def model_call(n: int) -> dict[str, Any]:
        await asyncio.sleep(latency)  # stands in for a 500 ms model call
        return {"n": n}

    tuned = settings.model_copy(update={"max_in_flight": in_flight, "web_port": 0})
    async with Worker(p, tuned) as worker, WeirClient(tuned) as client:
        await client.wait_for(name, [await client.submit(name, {"n": -1})], timeout=120)
        started = time.perf_counter()
        await client.submit_many(name, ({"n": i} for i in range(n)))
        async with asyncio.timeout(600):
            while worker.stats.results < n + 1:
                await asyncio.sleep(0.05)
        return n / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace, settings: WeirSettings) -> dict[str, float]:
    raw = await run_raw(settings, args.requests, args.latency, args.in_flight)
    weir = await run_weir(settings, args.requests, args.latency, args.in_flight)
    bound = args.in_flight / args.latency
    return {
        "requests": args.requests,
        "latency_s": args.latency,
        "in_flight": args.in_flight,
        "concurrency_bound_rps": bound,
        "raw_rps": round(raw, 1),
        "weir_rps": round(weir, 1),
        "weir_over_raw": round(weir / raw, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--latency", type=float, default=0.5, help="model call seconds")
    parser.add_argument("--in-flight", type=int, default=1000, help="max_in_flight")
    parser.add_argument("--bootstrap", help="existing Kafka (default: start a local broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with broker_settings(args.bootstrap) as settings:
        figures = asyncio.run(main_async(args, settings))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
