"""Trace benchmarks: the ClickHouse sink's throughput, and what tracing costs a pipeline.

1. **Sink**: N trace events are produced to a fresh trace topic (as workers write a
   fetched batch's events: ``--packed`` events per record, ``weir.schemas.trace_batch``;
   and one event per record, as the per-record path writes them), then a
   ``ClickHouseSink`` (in this process) drains them into a fresh embedded store
   (chDB); events/s = N / (partitions assigned and placed -> all N inserted).  Beside it, in the
   same run: the same N events only read from Kafka and buffered as the sink does
   (each scanned whole, no store), and the same events inserted straight into a
   second store (no Kafka), batch for batch: as Avro blocks ClickHouse decodes (the
   sink's way), and as rows decoded in Python (its way before, and its fallback).
2. **Tracing on vs off**: the linear 3-step pipeline of ``benchmarks/linear.py``
   (``inline=True``), burst phase, with trace events + OpenTelemetry spans (the
   defaults; spans are created, not exported) and with both off, alternating
   off/on ``--rounds`` times in one run; the figure is the ratio of req/s.

    python benchmarks/traces.py [--events N] [--requests N] [--rounds R] [--bootstrap h:p] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear import broker_settings, run_weir

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.core.urls import SecretUrl
from weir.schemas.messages import TRACE_EVENT_SCHEMA, ModelCall, TraceEvent
from weir.schemas.trace_batch import (
    TRACE_BATCH_HEADER,
    TRACE_BATCH_VERSION,
    pack_trace_events,
)
from weir.streams._bounded import RecentSet
from weir.topics.admin import TopicAdmin
from weir.topics.names import global_topic_specs
from weir.traces import TraceStore, event_row
from weir.traces._event_block import container
from weir.traces._event_insert import BLOCK_SCHEMA
from weir.traces._row_decoder import RowDecoder
from weir.traces._sink_batch import SinkBatch, SinkStats
from weir.traces.clickhouse_sink import ClickHouseSink


def _event(i: int, now: int) -> bytes:
    calls = []
    if i % 3 == 1:
        calls = [
            ModelCall(
                step="generate",
                attempt=1,
                endpoint="openai-main",
                provider="openai",
                model="gpt-4o-mini",
                operation="chat",
                status="SUCCESS",
                started_at=now - 40,
                duration_ms=38.0,
                input_tokens=420,
                output_tokens=64,
            )
        ]
    return TraceEvent(
        pipeline_id="bench",
        step_name=("retrieve", "generate", "deliver")[i % 3],
        request_id=f"r{i // 3}",
        attempt=1,
        status="FAILURE" if i % 50 == 0 else "SUCCESS",
        disposition="emitted",
        error_type="model_timeout" if i % 50 == 0 else None,
        created_at=now,
        started_at=now - 40,
        submitted_at=now - 100,
        duration_ms=40.0 + i % 17,
        queue_wait_ms=3.0,
        worker_id="bench-worker",
        topic="bench.step.generate",
        partition=i % 4,
        offset=i,
        calls=calls,
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
    ).encode()


async def _produce(settings: WeirSettings, values: list[bytes], packed: int) -> None:
    producer = KafkaConnection.of(settings).producer(acks="all", linger_ms=20)
    await producer.start()
    headers = [(TRACE_BATCH_HEADER, TRACE_BATCH_VERSION)]
    try:
        for start in range(0, len(values), 5000):
            chunk = values[start : start + 5000]
            if packed > 1:
                futures = [
                    await producer.send(
                        settings.trace_topic,
                        pack_trace_events(chunk[i : i + packed]),
                        key=str(start + i).encode(),
                        headers=headers,
                    )
                    for i in range(0, len(chunk), packed)
                ]
            else:
                futures = [
                    await producer.send(settings.trace_topic, v, key=str(start + i).encode())
                    for i, v in enumerate(chunk)
                ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _read_only(settings: WeirSettings, n: int) -> float:
    """Seconds to read and decode ``n`` events from the trace topic (no store)."""
    consumer = KafkaConnection.of(settings).consumer(
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    tps = [TopicPartition(settings.trace_topic, p) for p in range(settings.partitions)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    got = 0
    stats, recent = SinkStats(), RecentSet[str](settings.sink_seen_max)
    start = time.perf_counter()
    try:
        while got < n:
            batch = SinkBatch()  # as the sink buffers: whole events kept, others read here
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                for r in records:
                    got += batch.take(tp, r.offset, r.value, r.headers, stats=stats, recent=recent)
    finally:
        await consumer.stop()
    return time.perf_counter() - start


def _insert_only(
    settings: WeirSettings, values: list[bytes], batch: int, *, python_rows: bool = False
) -> tuple[float, float]:
    """Seconds and CPU seconds to insert the encoded events into a fresh store (no Kafka).

    As the sink does (an Avro block per batch, decoded by ClickHouse), or with
    ``python_rows`` as it did before (each event decoded into a row in Python).
    """
    store = TraceStore.connect(settings)
    decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(values), batch):
            chunk = values[i : i + batch]
            if python_rows:
                rows = [
                    decoder.row(v, 0, i + n) or event_row(TraceEvent.decode(v), 0, i + n)
                    for n, v in enumerate(chunk)
                ]
                store.insert(rows, token=f"bench-{i}")
            else:
                events = [(v, 0, i + n) for n, v in enumerate(chunk)]
                block = container(BLOCK_SCHEMA, os.urandom(16), events)
                store.insert_events(block, token=f"bench-{i}")
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        store.close()


async def sink_benchmark(settings: WeirSettings, n: int, packed: int) -> dict[str, Any]:
    name = f"bench-sink-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="weir-bench-ch-") as tmp:
        cfg = settings.model_copy(
            update={
                "trace_topic": f"weir.traces.{name}",
                "sink_group": name,
                "clickhouse_dsn": SecretUrl(f"chdb://{tmp}/sink"),
            }
        )
        async with TopicAdmin(cfg) as admin:
            await admin.ensure(global_topic_specs(cfg))
        now = int(time.time() * 1000)
        values = [_event(i, now) for i in range(n)]
        await _produce(cfg, values, packed)
        cpu = time.process_time()
        read_s = await _read_only(cfg, n)
        read_cpu = time.process_time() - cpu

        sink = ClickHouseSink(cfg)
        await sink.start()
        try:
            async with asyncio.timeout(600):
                # Polling the sink's counters: from "ready" on, it is insert throughput.
                while not sink.ready:
                    await asyncio.sleep(0.01)
                start, cpu = time.perf_counter(), time.process_time()
                while sink.stats.inserted < n:
                    await asyncio.sleep(0.01)
            sink_s = time.perf_counter() - start
            # This process's CPU (the sink's loop, its insert thread, the embedded engine):
            # what an event costs, whatever the other processes on the machine take.
            sink_cpu = time.process_time() - cpu
        finally:
            await sink.stop()
        store_settings = cfg.model_copy(
            update={"clickhouse_dsn": SecretUrl(f"chdb://{tmp}/direct")}
        )
        insert_s, insert_cpu = await asyncio.to_thread(
            _insert_only, store_settings, values, cfg.sink_batch_size
        )
        rows_settings = cfg.model_copy(update={"clickhouse_dsn": SecretUrl(f"chdb://{tmp}/rows")})
        rows_s, rows_cpu = await asyncio.to_thread(
            _insert_only, rows_settings, values, cfg.sink_batch_size, python_rows=True
        )
    return {
        "events": n,
        "events_per_record": packed,
        "batch_size": cfg.sink_batch_size,
        "sink_events_per_s": round(n / sink_s, 1),
        "sink_batches": sink.stats.batches,
        "sink_cpu_us_per_event": round(sink_cpu / n * 1e6, 2),
        "read_scan_cpu_us_per_event": round(read_cpu / n * 1e6, 2),
        "read_scan_only_events_per_s": round(n / read_s, 1),
        "insert_only_events_per_s": round(n / insert_s, 1),
        "insert_only_cpu_us_per_event": round(insert_cpu / n * 1e6, 2),
        "insert_python_rows_events_per_s": round(n / rows_s, 1),
        "insert_python_rows_cpu_us_per_event": round(rows_cpu / n * 1e6, 2),
    }


async def tracing_benchmark(settings: WeirSettings, requests: int, rounds: int) -> dict[str, Any]:
    off = settings.model_copy(update={"trace_events": False, "otel_enabled": False})
    on = settings.model_copy(update={"trace_events": True, "otel_enabled": True})
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for label, cfg in (("off", off), ("on", on)):
            result = await run_weir(cfg, requests, 20, inline=True)
            runs[label].append(result.burst.rps)
    best = {k: max(v) for k, v in runs.items()}
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    return {
        "requests": requests,
        "rounds": rounds,
        "rps_off": runs["off"],
        "rps_on": runs["on"],
        "ratio_on_off_mean": round(mean["on"] / mean["off"], 3),
        "ratio_on_off_best": round(best["on"] / best["off"], 3),
    }


async def main_async(args: argparse.Namespace, settings: WeirSettings) -> dict[str, Any]:
    return {
        "sink": await sink_benchmark(settings, args.events, args.packed),
        "sink_single": await sink_benchmark(settings, args.events, 1),
        "tracing": None
        if args.sink_only
        else await tracing_benchmark(settings, args.requests, args.rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="trace events for the sink")
    parser.add_argument("--requests", type=int, default=10_000, help="burst size per run")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument(
        "--packed", type=int, default=250, help="events per trace record (a worker's batch)"
    )
    parser.add_argument("--sink-only", action="store_true", help="skip tracing on vs off")
    parser.add_argument("--bootstrap", help="existing Kafka (default: start a local broker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with broker_settings(args.bootstrap) as settings:
        result = asyncio.run(main_async(args, settings))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    t = result["tracing"]
    for s in (result["sink"], result["sink_single"]):
        print(
            f"sink into chDB, {s['events_per_record']} event(s) per record:"
            f" {s['sink_events_per_s']:,.0f} events/s ({s['events']} events,"
            f" {s['sink_batches']} inserts of <= {s['batch_size']})\n"
            f"  same run, Kafka read + scan only: {s['read_scan_only_events_per_s']:,.0f}"
            f" events/s; inserts only (no Kafka), ClickHouse decoding:"
            f" {s['insert_only_events_per_s']:,.0f} events/s; rows decoded in Python:"
            f" {s['insert_python_rows_events_per_s']:,.0f}\n"
            f"  CPU per event: sink {s['sink_cpu_us_per_event']} us (all its threads),"
            f" read + scan {s['read_scan_cpu_us_per_event']} us, inserts"
            f" {s['insert_only_cpu_us_per_event']} us (rows in Python:"
            f" {s['insert_python_rows_cpu_us_per_event']} us)"
        )
    if t is None:
        return
    print(
        f"linear pipeline burst of {t['requests']}: req/s off {t['rps_off']}, on {t['rps_on']};"
        f" on/off = {t['ratio_on_off_mean']} (mean), {t['ratio_on_off_best']} (best)"
    )


if __name__ == "__main__":
    main()
