"""Linear-pipeline benchmark: weir beside a plain aiokafka loop with the same hops.

Both systems move each request across six topics, produced with ``acks=all`` and
idempotence, on topics of the same partition count:

* raw:  ``t0 -> relay -> t1 -> relay -> t2 -> relay -> t3 -> relay -> t4 -> relay -> results``
* weir: ``requests -> ingress -> step.step1 -> step1 -> step.step2 -> step2
  -> step.step3 -> step3 -> answers -> answer stage -> results``

weir does more per hop than the relay: envelope encoding, joins-ready bookkeeping,
a trace event per step attempt, and results written in Kafka transactions with
their "answered" markers (exactly-once answers).  ``benchmarks/traces.py``
measures what the trace events cost.

Each system runs two phases: a *probe* (one request at a time, so latency is the
unloaded path) and a *burst* (N requests submitted at once, so throughput is the
bound; latency there is mostly queueing).  Client, worker and reader share one
process and one event loop, in both systems.

    python benchmarks/linear.py [--requests N] [--probe K] [--bootstrap host:port] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from weir.core.kafka import KafkaConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weir.core.config import BrokerSettings, WeirSettings, load_settings
from weir.schemas.messages import now_us
from weir.streams.client import WeirClient
from weir.streams.pipeline import Pipeline
from weir.streams.worker import Worker
from weir.topics._aiokafka import rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import TopicSpec

HOPS = 6
"""Topics a request crosses, submit to result read, in both systems."""
PARTITIONS = 4
PHASE_TIMEOUT_S = 300.0
COMMIT_INTERVAL_S = 1.0

Arrival = tuple[float, float]
"""(end-to-end latency in ms, per-hop latency in ms) of one request."""


@dataclass
class Phase:
    """Figures of one phase of one system."""

    requests: int
    seconds: float
    rps: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    hop_p50_ms: float
    hop_p99_ms: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class SystemResult:
    """A system's probe and burst phases."""

    name: str
    hop_definition: str
    probe: Phase
    burst: Phase


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(n: int, seconds: float, e2e: list[float], hops: list[float], **extra: float) -> Phase:
    """Build a ``Phase`` from per-request end-to-end and per-hop samples (ms)."""
    return Phase(
        requests=n,
        seconds=round(seconds, 3),
        rps=round(n / seconds, 1) if seconds > 0 else float("nan"),
        e2e_p50_ms=round(percentile(e2e, 50), 2),
        e2e_p99_ms=round(percentile(e2e, 99), 2),
        hop_p50_ms=round(percentile(hops, 50), 2),
        hop_p99_ms=round(percentile(hops, 99), 2),
        extra={k: round(v, 2) for k, v in extra.items()},
    )


# -- phases shared by both systems -----------------------------------------------------


async def probe_phase(
    submit_one: Callable[[], Awaitable[None]], arrivals: asyncio.Queue[Any], k: int
) -> tuple[float, list[Any]]:
    """Send ``k`` requests one at a time, each after the previous result arrived."""
    got = []
    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        for _ in range(k):
            await submit_one()
            got.append(await arrivals.get())
    return time.perf_counter() - start, got


async def burst_phase(
    submit_many: Callable[[int], Awaitable[None]], arrivals: asyncio.Queue[Any], n: int
) -> tuple[float, list[Any]]:
    """Submit ``n`` requests at once; time first submit to last result read."""
    got = []
    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        sending = asyncio.create_task(submit_many(n))
        while len(got) < n:
            got.append(await arrivals.get())
        await sending
    return time.perf_counter() - start, got


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return KafkaConnection(bootstrap=bootstrap).producer(
        acks="all", enable_idempotence=True, linger_ms=linger_ms
    )


# -- raw aiokafka ----------------------------------------------------------------------


class RawLoop:
    """One consumer group + one producer relaying t0..t3 to the next topic, with commits."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        prefix = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.topics = [f"{prefix}.t{i}" for i in range(HOPS - 1)] + [f"{prefix}.results"]
        self.group = f"{prefix}.relay"
        self.hops: list[float] = []
        """Per-hop latencies (ms) of the current phase: produce timestamp to consume."""
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()
        """End-to-end latency (ms) of each result read."""

    @staticmethod
    def _message(rid: str, submitted_us: int) -> bytes:
        return json.dumps({"id": rid, "sub": submitted_us, "ts": submitted_us}).encode()

    async def relay(self, producer: AIOKafkaProducer) -> None:
        """Consume t0..t3, produce each record to the next topic; commit acked offsets.

        Each batch's sends are awaited before the next fetch; offsets are committed
        every ``COMMIT_INTERVAL_S`` (weir's default ``commit_interval_s``).
        """
        consumer = KafkaConnection(bootstrap=self.bootstrap).consumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=500,
        )
        await consumer.start()
        consumer.subscribe(self.topics[:-1])
        following = dict(zip(self.topics, self.topics[1:], strict=False))
        last_commit = time.monotonic()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                futures = []
                for tp, records in batches.items():
                    to = following[tp.topic]
                    for record in records:
                        message = json.loads(record.value)
                        now = now_us()
                        self.hops.append((now - message["ts"]) / 1000)
                        message["ts"] = now
                        value = json.dumps(message).encode()
                        futures.append(await producer.send(to, value=value, key=record.key))
                if futures:
                    await asyncio.gather(*futures)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    await consumer.commit()
                    last_commit = time.monotonic()
        finally:
            await consumer.stop()

    async def read(self) -> None:
        """Read the results topic; record the last hop and the end-to-end latency."""
        consumer = KafkaConnection(bootstrap=self.bootstrap).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        tps = [TopicPartition(self.topics[-1], p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        message = json.loads(record.value)
                        now = now_us()
                        self.hops.append((now - message["ts"]) / 1000)
                        self.arrivals.put_nowait((now - message["sub"]) / 1000)
        finally:
            with contextlib.suppress(Exception):
                await stop_consumer(consumer)

    async def run(self, settings: WeirSettings, n: int, k: int) -> SystemResult:
        """Create the topics, warm up, then run the probe and burst phases."""
        async with TopicAdmin(settings) as admin:
            await admin.ensure(
                TopicSpec(t, PARTITIONS, 1, {"cleanup.policy": "delete"}) for t in self.topics
            )
        producer = _producer(self.bootstrap, linger_ms=2)  # as the weir worker's
        client = _producer(self.bootstrap, linger_ms=5)  # as WeirClient's
        await producer.start()
        await client.start()
        async with _background(self.relay(producer), self.read()):
            try:

                async def submit_one() -> None:
                    await client.send_and_wait(self.topics[0], self._message("p", now_us()))

                async def submit_many(count: int) -> None:
                    futures = []
                    for _ in range(count):
                        rid = uuid.uuid4().hex
                        value = self._message(rid, now_us())
                        futures.append(
                            await client.send(self.topics[0], value=value, key=rid.encode())
                        )
                    await asyncio.gather(*futures)

                await probe_phase(submit_one, self.arrivals, 1)  # warm-up: group joined
                self.hops = []
                seconds, e2e = await probe_phase(submit_one, self.arrivals, k)
                probe = summarize(k, seconds, e2e, self.hops)
                self.hops = []
                seconds, e2e = await burst_phase(submit_many, self.arrivals, n)
                burst = summarize(n, seconds, e2e, self.hops)
            finally:
                await client.stop()
                await producer.stop()
        return SystemResult(
            "raw aiokafka",
            f"measured: produce timestamp in the message to consume, over all {HOPS} hops",
            probe,
            burst,
        )


# -- weir ------------------------------------------------------------------------------


def linear_pipeline(name: str, *, inline: bool) -> Pipeline:
    """Three trivial sync steps in a line."""
    p = Pipeline(name)

    @p.step(inline=inline)
    def step1(request: dict[str, Any]) -> dict[str, Any]:
        return {"n": request["n"] + 1}

    @p.step(depends_on=[step1], inline=inline)
    def step2(step1: dict[str, Any]) -> dict[str, Any]:
        return {"n": step1["n"] + 1}

    @p.step(depends_on=[step2], inline=inline)
    def step3(step2: dict[str, Any]) -> dict[str, Any]:
        return {"n": step2["n"] + 1}

    return p


async def run_weir(settings: WeirSettings, n: int, k: int, *, inline: bool) -> SystemResult:
    """Run a fresh 3-step pipeline's worker and client in this process; probe, then burst."""
    name = f"bench-{'inline' if inline else 'pool'}-{uuid.uuid4().hex[:8]}"
    worker = Worker(linear_pipeline(name, inline=inline), settings)
    arrivals: asyncio.Queue[tuple[float, float]] = asyncio.Queue()

    async def read(client: WeirClient) -> None:
        async for result in client.results(name, follow=True):
            observed = time.time_ns() / 1e6 - result.submitted_at
            arrivals.put_nowait((observed, result.latency_ms))

    async with worker, WeirClient(settings) as client, _background(read(client)):

        async def submit_one() -> None:
            await client.submit(name, {"n": 0})

        async def submit_many(count: int) -> None:
            await client.submit_many(name, ({"n": i} for i in range(count)))

        await probe_phase(submit_one, arrivals, 1)  # warm-up: worker's group joined
        phases = []
        for seconds, got, count in [
            (*await probe_phase(submit_one, arrivals, k), k),
            (*await burst_phase(submit_many, arrivals, n), n),
        ]:
            observed = [o for o, _ in got]
            phases.append(
                summarize(
                    count,
                    seconds,
                    observed,
                    [o / HOPS for o in observed],
                    result_latency_p50_ms=percentile([r for _, r in got], 50),
                    result_latency_p99_ms=percentile([r for _, r in got], 99),
                )
            )
    return SystemResult(
        f"weir ({'inline=True' if inline else 'thread pool'})",
        f"derived: (result read time - submitted_at) / {HOPS} hops",
        *phases,
    )


@contextlib.asynccontextmanager
async def _background(*coros: Awaitable[None]) -> AsyncIterator[None]:
    """Run ``coros`` as tasks for the duration of the block; cancel them after."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- broker and report -----------------------------------------------------------------


@contextlib.contextmanager
def broker_settings(bootstrap: str | None) -> Iterator[WeirSettings]:
    """Settings for ``bootstrap``, or for a throw-away local broker started here."""
    if bootstrap:
        yield load_settings(kafka_bootstrap=bootstrap, partitions=PARTITIONS)
        return
    from weir.topics.broker import LocalBroker, free_port_pair

    settings = load_settings(broker=BrokerSettings(port=free_port_pair()), partitions=PARTITIONS)
    with tempfile.TemporaryDirectory(prefix="weir-bench-") as state:
        broker = LocalBroker(settings, state_dir=Path(state))
        broker.start()
        try:
            yield settings
        finally:
            broker.stop()


def render(results: list[SystemResult], raw: SystemResult) -> str:
    """A plain-text table of every system and phase, with ratios to raw."""
    head = (
        f"{'system':<24} {'phase':<6} {'N':>6} {'req/s':>9} {'e2e p50':>9} {'e2e p99':>9}"
        f" {'hop p50':>8} {'hop p99':>8}  {'x raw req/s':>11} {'x raw p50':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        for label, ph, base in (("probe", r.probe, raw.probe), ("burst", r.burst, raw.burst)):
            lines.append(
                f"{r.name:<24} {label:<6} {ph.requests:>6} {ph.rps:>9.1f} {ph.e2e_p50_ms:>9.2f}"
                f" {ph.e2e_p99_ms:>9.2f} {ph.hop_p50_ms:>8.2f} {ph.hop_p99_ms:>8.2f}"
                f"  {ph.rps / base.rps:>11.2f} {ph.e2e_p50_ms / base.e2e_p50_ms:>9.2f}"
            )
    lines.append("")
    lines.append("latencies in ms; e2e = submit to result read; hop:")
    lines.extend(f"  {r.name}: {r.hop_definition}" for r in results)
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, settings: WeirSettings) -> list[SystemResult]:
    """Run raw, then weir inline, then (unless skipped) weir with the thread pool."""
    raw = await RawLoop(settings.bootstrap_servers).run(settings, args.requests, args.probe)
    results = [raw, await run_weir(settings, args.requests, args.probe, inline=True)]
    if not args.inline_only:
        results.append(await run_weir(settings, args.requests, args.probe, inline=False))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="burst size (default 20000)")
    parser.add_argument("--probe", type=int, default=200, help="one-at-a-time requests")
    parser.add_argument("--bootstrap", help="existing Kafka (default: start a local broker)")
    parser.add_argument("--inline-only", action="store_true", help="skip the thread-pool run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    with broker_settings(args.bootstrap) as settings:
        results = asyncio.run(main_async(args, settings))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render(results, results[0]))


if __name__ == "__main__":
    main()
