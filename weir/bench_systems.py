"""The systems ``weir bench`` runs, each as its own process: weir's worker and the chains.

Run as ``python -m weir.bench weir|chain|chain-txn|chain-ck <name> <bootstrap> [options]``
(the entry stays in ``weir.bench`` so a baseline checkout's children start the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

from weir.bench_sampler import Sampler
from weir.core.kafka import KafkaConnection

__all__ = [
    "HOPS",
    "PARTITIONS",
    "READY",
    "chain_topics",
    "child_main",
    "linear_pipeline",
    "slow_pipeline",
]

PARTITIONS = 4
HOPS = 3
READY = "weir-bench-ready"


def linear_pipeline(name: str) -> Any:
    """Three inline steps in a line, each adding 1 to ``n``."""
    from weir.streams.pipeline import Pipeline

    p = Pipeline(name)

    @p.step(inline=True)
    def step1(n: int) -> dict[str, int]:
        return {"n": n + 1}

    @p.step(depends_on=[step1], inline=True)
    def step2(step1: dict[str, int]) -> dict[str, int]:
        return {"n": step1["n"] + 1}

    @p.step(depends_on=[step2], inline=True)
    def step3(step2: dict[str, int]) -> dict[str, int]:
        return {"n": step2["n"] + 1}

    return p


def slow_pipeline(name: str, latency_s: float) -> Any:
    """One async step awaiting a ``latency_s`` "model call", then adding 1 to ``n``."""
    from weir.streams.pipeline import Pipeline

    p = Pipeline(name)

    @p.step()
    async def model(n: int) -> dict[str, int]:
        await asyncio.sleep(latency_s)
        return {"n": n + 1}

    return p


async def _weir_child(
    name: str, bootstrap: str, tracing: bool, profile: str | None = None, slow_s: float = 0.0
) -> None:
    from weir.core.config import load_settings
    from weir.streams.worker import Worker

    # Tracing on: both parts by default, so a variant may turn one off
    # (``events-only:WEIR_OTEL_ENABLED=false``, ``ids-only:WEIR_TRACE_EVENTS=false``).
    off: dict[str, Any] = {} if tracing else {"trace_events": False, "otel_enabled": False}
    settings = load_settings(kafka_bootstrap=bootstrap, partitions=PARTITIONS, **off)
    pipeline = slow_pipeline(name, slow_s) if slow_s else linear_pipeline(name)
    worker = Worker(pipeline, settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
    await worker.start()
    sampler = None
    if profile:
        sampler = Sampler()
        loop.add_signal_handler(signal.SIGUSR1, sampler.start)
    print(READY, flush=True)
    try:
        await worker.run()
    finally:
        if sampler is not None and profile:
            sampler.stop()
            Path(profile).write_text(sampler.report())  # noqa: ASYNC240 (exiting)


async def _chain_child(
    prefix: str, bootstrap: str, profile: str | None = None, *, exactly_once: bool = False
) -> None:
    """The hand-written chain: each record becomes ``n + 1`` on the next topic.

    ``exactly_once``: the last hop writes its results the way weir writes answers, in a
    Kafka transaction with its input offsets (one per fetched batch), so a result is
    read once by a ``read_committed`` reader whatever crashes; the other hops stay
    at-least-once, as weir's steps are.
    """
    topics = chain_topics(prefix)
    following = dict(itertools.pairwise(topics))
    last = topics[-2]
    from weir.core.config import load_settings

    # The same linger as weir's worker producer, so only the work differs.
    linger_ms = load_settings().producer_linger_ms
    kafka = KafkaConnection(bootstrap=bootstrap)
    producer = kafka.producer(acks="all", enable_idempotence=True, linger_ms=linger_ms)
    answers = (
        kafka.producer(transactional_id=f"{prefix}.chain-txn", acks="all", linger_ms=linger_ms)
        if exactly_once
        else None
    )
    group = f"{prefix}.chain"
    consumer = kafka.consumer(
        *topics[:-1],
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
    )
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await producer.start()
    if answers is not None:
        await answers.start()
    await consumer.start()
    sampler = None
    if profile:
        sampler = Sampler()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, sampler.start)
    print(READY, flush=True)
    last_commit = time.monotonic()
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            futures = []
            results: list[tuple[str, bytes, bytes | None]] = []
            for tp, records in batches.items():
                to = following[tp.topic]
                for record in records:
                    message = json.loads(record.value)
                    message["n"] += 1
                    value = json.dumps(message).encode()
                    if answers is not None and tp.topic == last:
                        results.append((to, value, record.key))
                    else:
                        futures.append(await producer.send(to, value=value, key=record.key))
            if answers is not None and results:
                offsets = {
                    tp: records[-1].offset + 1
                    for tp, records in batches.items()
                    if tp.topic == last and records
                }
                async with answers.transaction():
                    for to, value, key in results:
                        await answers.send(to, value=value, key=key)
                    await answers.send_offsets_to_transaction(offsets, group)
            if futures:
                await asyncio.gather(*futures)
            if time.monotonic() - last_commit >= 1.0:
                await consumer.commit()
                last_commit = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()
        if answers is not None:
            await answers.stop()
        if sampler is not None and profile:
            sampler.stop()
            Path(profile).write_text(sampler.report())  # noqa: ASYNC240 (exiting)


def _confluent_child(prefix: str, bootstrap: str) -> None:
    """The same chain on confluent-kafka (librdkafka): a synchronous poll loop, one flush
    (every ack) per fetched batch, offsets committed every second."""
    from confluent_kafka import Consumer, Producer

    from weir.core.config import load_settings

    topics = chain_topics(prefix)
    following = dict(itertools.pairwise(topics))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": load_settings().producer_linger_ms,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}.chain",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe(topics[:-1])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(READY, flush=True)
    last_commit = time.monotonic()
    try:
        while not stopping:
            # What is there now, else wait for one record (consume() would wait for 500).
            records = consumer.consume(num_messages=500, timeout=0)
            if not records:
                first = consumer.poll(0.2)
                records = [] if first is None else [first]
            for record in records:
                raw, topic = record.value(), record.topic()
                if record.error() is not None or raw is None or topic is None:
                    continue
                message = json.loads(raw)
                message["n"] += 1
                value = json.dumps(message).encode()
                while True:
                    try:
                        producer.produce(following[topic], value, key=record.key())
                        break
                    except BufferError:
                        producer.poll(0.01)
            if records:
                producer.flush()
            if time.monotonic() - last_commit >= 1.0:
                with contextlib.suppress(Exception):  # nothing to commit yet
                    consumer.commit(asynchronous=False)
                last_commit = time.monotonic()
    finally:
        consumer.close()
        producer.flush()


def chain_topics(prefix: str) -> list[str]:
    return [f"{prefix}.t{i}" for i in range(HOPS + 1)]


# -- the driver ------------------------------------------------------------------------


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m weir.bench")
    parser.add_argument("kind", choices=["weir", "chain", "chain-txn", "chain-ck"])
    parser.add_argument("name")
    parser.add_argument("bootstrap")
    parser.add_argument("--no-tracing", action="store_true")
    parser.add_argument("--profile", help="write a sampling profile here (starts on SIGUSR1)")
    parser.add_argument("--slow", type=float, default=0.0, help="one step awaiting this many s")
    args = parser.parse_args(argv)
    if args.kind == "weir":
        asyncio.run(
            _weir_child(args.name, args.bootstrap, not args.no_tracing, args.profile, args.slow)
        )
    elif args.kind == "chain-ck":
        _confluent_child(args.name, args.bootstrap)
    else:
        asyncio.run(
            _chain_child(
                args.name, args.bootstrap, args.profile, exactly_once=args.kind == "chain-txn"
            )
        )
