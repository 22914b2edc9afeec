"""``weir bench``: weir's worker beside a hand-written aiokafka chain, as separate processes.

Both systems run the same workload: a request carries ``{"n": 0}`` and three hops each
add 1 to ``n``, on topics of 4 partitions, produced with ``acks=all`` and idempotence.

* **chain**: one process, one consumer group on ``t0, t1, t2`` and one producer (the
  worker producer's ``linger_ms``); each
  record becomes ``n + 1`` on the next topic (``t3`` holds the results); each fetched
  batch's sends are gathered once; offsets committed every second.
* **weir**: one ``Worker`` process running a 3-step pipeline of ``inline=True`` steps,
  defaults otherwise (trace events, span ids, exactly-once answers in transactions).

The driver (this process) owns the load and the reading: per run it starts the system's
process on fresh topics and a fresh group, warms it up (group joined, a small burst),
then times a **burst** of N requests (first send to last result read, results read
``read_committed``), reads the process's CPU seconds before and after (``/proc``), then
an **unloaded probe**: requests one at a time, e2e latency from send to result read.
Runs alternate between the systems (weir, chain, weir, chain ...).

Child processes: ``python -m weir.bench weir|chain <name> <bootstrap> [options]``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from weir.bench_hops import hop_figures, hop_latencies, weir_hop_topics
from weir.bench_measures import (
    BenchBroker,
    ResultReader,
    broker,
    peak_rss_mb,
    percentile,
    process_cpu_s,
    spawn,
    stop,
)
from weir.bench_systems import (
    PARTITIONS,
    chain_topics,
    child_main,
    linear_pipeline,
    slow_pipeline,
)
from weir.core.kafka import KafkaConnection

__all__ = [
    "BenchConfig",
    "Round",
    "RunFigures",
    "linear_pipeline",
    "round_order",
    "run_bench",
    "summary",
]


@dataclass
class BenchConfig:
    requests: int = 20_000
    probe: int = 200
    rounds: int = 3
    warmup: int = 500
    broker_warmup: int = 10_000
    """Requests through weir and the chain once before the first round, not reported: the
    broker's JIT compiles its hot paths over the first bursts, which would favour later runs."""
    tracing_off: bool = False
    """Also run weir with trace events and spans off (the tracing cost)."""
    two_workers: bool = False
    """Also run weir with two worker processes in one group (the scaling ratio)."""
    confluent: bool = False
    """Also run the chain on confluent-kafka (librdkafka) instead of aiokafka."""
    chain_txn: bool = False
    """Also run the chain with exactly-once results (``chain-txn``: its last hop writes in
    a transaction with its input offsets, as weir's answers are written)."""
    bootstrap: str | None = None
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    """More weir runs, by name: environment overrides (``WEIR_GC_GEN0_THRESHOLD=0``...);
    ``WEIR_BENCH_TREE=<dir>`` runs that worker from another checkout (a baseline)."""
    slow_model_s: float = 0.0
    """Also run weir with one async step awaiting this long (a slow model): ``weir-slow``,
    a burst of ``slow_burst`` requests."""
    slow_burst: int = 10_000
    profile: str | None = None
    """Sample each system's (first) process from its burst on.

    Writes ``<profile>-<system>-r<round>.txt``."""
    timeout_s: float = 300.0


@dataclass
class RunFigures:
    """One run of one system."""

    system: str
    round: int
    requests: int
    seconds: float
    rps: float
    cpu_s: float
    """CPU seconds of the system's process(es) during the burst."""
    cpu_ms_per_request: float
    broker_cpu_ms_per_request: float | None
    """The broker's CPU during the burst / N (``None`` on a broker the bench did not start)."""
    submit_s: float
    """How long the driver took to hand the burst to the broker."""
    probe_p50_ms: float
    probe_p99_ms: float
    peak_rss_mb: float
    processes: int = 1
    warm_rss_mb: float = 0.0
    """Resident set after the warm-up, before the burst (the burst's cost is the peak minus it)."""
    hop_p50_ms: list[float] = field(default_factory=list)
    """Per hop of the unloaded probe (``weir.bench_hops``): median ms from a record's
    timestamp on one topic to its request's record on the next."""
    hop_p99_ms: list[float] = field(default_factory=list)


@dataclass
class Round:
    runs: list[RunFigures] = field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------


async def _run_one(
    system: str,
    round_no: int,
    cfg: BenchConfig,
    server: BenchBroker,
    progress: Callable[[int], None],
) -> RunFigures:
    from weir.core.config import load_settings
    from weir.topics.admin import TopicAdmin
    from weir.topics.names import PipelineTopics, TopicSpec

    bootstrap = server.bootstrap
    profiled = [f"--profile={cfg.profile}-{system}-r{round_no}.txt"] if cfg.profile else []
    tag = uuid.uuid4().hex[:8]
    procs: list[asyncio.subprocess.Process] = []
    if system in ("chain", "chain-txn", "chain-ck"):
        prefix = f"bench-{system}-{tag}"
        topics = chain_topics(prefix)
        settings = load_settings(kafka_bootstrap=bootstrap)
        async with TopicAdmin(settings) as admin:
            await admin.ensure(
                TopicSpec(t, PARTITIONS, 1, {"cleanup.policy": "delete"}) for t in topics
            )
        source, results = topics[0], topics[-1]
        hop_topics = topics
        procs.append(await spawn(system, prefix, bootstrap, *profiled))

        def encode(rid: str) -> bytes:
            return json.dumps({"id": rid, "n": 0}).encode()
    else:
        name = f"bench-{tag}"
        tracing = system != "weir-notrace"
        slow = ["--slow", str(cfg.slow_model_s)] if system == "weir-slow" else []
        count = 2 if system == "weir-2w" else 1
        t = PipelineTopics(name)
        source, results = t.requests, t.results
        hop_topics = weir_hop_topics(
            slow_pipeline(name, cfg.slow_model_s) if slow else linear_pipeline(name)
        )
        flags = [] if tracing else ["--no-tracing"]
        extra = cfg.variants.get(system)
        procs.append(
            await spawn("weir", name, bootstrap, *flags, *slow, *profiled, env_extra=extra)
        )
        for _ in range(count - 1):
            procs.append(await spawn("weir", name, bootstrap, *flags, env_extra=extra))

        def encode(rid: str) -> bytes:
            return json.dumps({"request_id": rid, "payload": {"n": 0}}).encode()

    connection = KafkaConnection(bootstrap=bootstrap)
    producer = connection.producer(
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    # The unloaded requests go out at once: their latency is the system's, not the 5 ms
    # the burst's producer lingers to fill its batches (both systems paid it until 2026-12).
    single = connection.producer(acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    await single.start()
    reader = ResultReader(bootstrap, results)
    await reader.start()
    slow_run = system == "weir-slow"
    requests = cfg.slow_burst if slow_run else cfg.requests
    # A slow model's unloaded latency is the model's: a few probes say so.
    probes = min(cfg.probe, 10) if slow_run else cfg.probe
    try:
        async with asyncio.timeout(cfg.timeout_s):
            # Warm-up: one request (the group has joined), then a small burst.
            await _one(single, reader, source, encode, "warm-0")
            if cfg.warmup:
                await _burst(producer, reader, source, encode, cfg.warmup, "warm")
            # The burst.
            reader.on_arrival = progress
            if cfg.profile and system != "chain-ck":
                procs[0].send_signal(signal.SIGUSR1)
            warm_rss = max(peak_rss_mb(p.pid, "VmRSS") for p in procs)
            cpu0 = sum(process_cpu_s(p.pid) for p in procs)
            broker0 = process_cpu_s(server.pid) if server.pid else 0.0
            seconds, submit_s = await _burst(producer, reader, source, encode, requests, "b")
            cpu_s = sum(process_cpu_s(p.pid) for p in procs) - cpu0
            broker_cpu_s = process_cpu_s(server.pid) - broker0 if server.pid else None
            reader.on_arrival = lambda n: None
            # Unloaded: one at a time.
            latencies = []
            for i in range(probes):
                latencies.append(await _one(single, reader, source, encode, f"p-{i}"))
                progress(0)
            rss = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        await reader.stop()
        await producer.stop()
        await single.stop()
        for p in procs:
            await stop(p)
    probed = [f"p-{i}".encode() for i in range(probes)]
    hop_p50, hop_p99 = hop_figures(await hop_latencies(bootstrap, hop_topics, probed))
    return RunFigures(
        system=system,
        round=round_no,
        requests=requests,
        seconds=round(seconds, 3),
        rps=round(requests / seconds, 1),
        cpu_s=round(cpu_s, 3),
        cpu_ms_per_request=round(cpu_s * 1000 / requests, 4),
        broker_cpu_ms_per_request=(
            None if broker_cpu_s is None else round(broker_cpu_s * 1000 / requests, 4)
        ),
        submit_s=round(submit_s, 3),
        probe_p50_ms=round(percentile(latencies, 50), 2),
        probe_p99_ms=round(percentile(latencies, 99), 2),
        peak_rss_mb=round(rss, 1),
        processes=len(procs),
        warm_rss_mb=round(warm_rss, 1),
        hop_p50_ms=hop_p50,
        hop_p99_ms=hop_p99,
    )


async def _one(
    producer: Any, reader: ResultReader, topic: str, encode: Callable[[str], bytes], rid: str
) -> float:
    """Send one request and wait for its result; the e2e latency in ms."""
    key = rid.encode()
    fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    reader.waiting[key] = fut
    start = time.perf_counter()
    await producer.send_and_wait(topic, encode(rid), key=key)
    arrived = await fut
    return (arrived - start) * 1000


async def _burst(
    producer: Any,
    reader: ResultReader,
    topic: str,
    encode: Callable[[str], bytes],
    n: int,
    tag: str,
) -> tuple[float, float]:
    """Send ``n`` requests at once; (first send to last result read, time to send) in s."""
    run = uuid.uuid4().hex[:6]
    messages = [(f"{tag}-{run}-{i}".encode(), encode(f"{tag}-{run}-{i}")) for i in range(n)]
    reader.expect(n)
    start = time.perf_counter()
    futures = [await producer.send(topic, value, key=key) for key, value in messages]
    await asyncio.gather(*futures)
    submitted = time.perf_counter() - start
    await reader.done.wait()
    return time.perf_counter() - start, submitted


def systems(cfg: BenchConfig) -> list[str]:
    out = ["weir", "chain"]
    if cfg.tracing_off:
        out.append("weir-notrace")
    if cfg.two_workers:
        out.append("weir-2w")
    if cfg.chain_txn:
        out.append("chain-txn")
    if cfg.confluent:
        out.append("chain-ck")
    if cfg.slow_model_s:
        out.append("weir-slow")
    return out + list(cfg.variants)


def round_order(cfg: BenchConfig, r: int) -> list[str]:
    """Round ``r``'s order (from 1): the systems rotated by one each round, so each takes
    each place equally often (the first run of a run was measured the slowest, however
    long the broker's warm-up)."""
    order = systems(cfg)
    shift = (r - 1) % len(order)
    return order[shift:] + order[:shift]


def run_bench(
    cfg: BenchConfig,
    *,
    progress: Callable[[int], None] = lambda n: None,
    status: Callable[[str], None] = lambda s: None,
) -> list[Round]:
    """Start (or use) a broker and run ``cfg.rounds`` alternating rounds of every system."""
    with broker(cfg.bootstrap) as server:

        async def main() -> list[Round]:
            if cfg.broker_warmup:
                warm = replace(cfg, requests=cfg.broker_warmup, probe=1, profile=None)
                for system in ("weir", "chain"):
                    status(f"warming up the broker: {system}")
                    await _run_one(system, 0, warm, server, lambda n: None)
            rounds = []
            for r in range(1, cfg.rounds + 1):
                this = Round()
                for system in round_order(cfg, r):
                    status(f"round {r}/{cfg.rounds}: {system}")
                    this.runs.append(await _run_one(system, r, cfg, server, progress))
                rounds.append(this)
            return rounds

        return asyncio.run(main())


def _median_known(values: Iterable[float | None]) -> float | None:
    """The median of the known values, ``None`` when there are none."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _hop_medians(runs: list[list[float]]) -> list[float]:
    """Per hop, the median over runs."""
    hops = min((len(r) for r in runs), default=0)
    return [statistics.median(r[i] for r in runs) for i in range(hops)]


def summary(rounds: list[Round]) -> dict[str, dict[str, Any]]:
    """Per system: medians over rounds, and the median per-round ratio to the chain."""
    by_system: dict[str, list[RunFigures]] = {}
    chain_by_round = {}
    for rnd in rounds:
        for run in rnd.runs:
            by_system.setdefault(run.system, []).append(run)
            if run.system == "chain":
                chain_by_round[run.round] = run
    out: dict[str, dict[str, Any]] = {}
    for system, runs in by_system.items():
        ratios = [r.rps / chain_by_round[r.round].rps for r in runs if r.round in chain_by_round]
        p50_ratios = [
            r.probe_p50_ms / chain_by_round[r.round].probe_p50_ms
            for r in runs
            if r.round in chain_by_round
        ]
        out[system] = {
            "rps": statistics.median(r.rps for r in runs),
            "ratio": round(statistics.median(ratios), 3) if ratios else float("nan"),
            "cpu_ms_per_request": statistics.median(r.cpu_ms_per_request for r in runs),
            "broker_cpu_ms_per_request": _median_known(r.broker_cpu_ms_per_request for r in runs),
            "probe_p50_ms": statistics.median(r.probe_p50_ms for r in runs),
            "probe_p99_ms": statistics.median(r.probe_p99_ms for r in runs),
            "p50_ratio": round(statistics.median(p50_ratios), 3) if p50_ratios else float("nan"),
            "peak_rss_mb": max(r.peak_rss_mb for r in runs),
            "burst_rss_mb": max(r.peak_rss_mb - r.warm_rss_mb for r in runs),
            "submit_s": statistics.median(r.submit_s for r in runs),
            "hop_p50_ms": _hop_medians([r.hop_p50_ms for r in runs]),
            "hop_p99_ms": _hop_medians([r.hop_p99_ms for r in runs]),
        }
    return out


def as_json(cfg: BenchConfig, rounds: list[Round], command: str) -> str:
    return json.dumps(
        {
            "config": asdict(cfg),
            "command": command,
            "summary": summary(rounds),
            "runs": [asdict(run) for rnd in rounds for run in rnd.runs],
        },
        indent=2,
    )


if __name__ == "__main__":
    child_main(sys.argv[1:])
