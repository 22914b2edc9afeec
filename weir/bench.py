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

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weir.core.kafka import KafkaConnection

__all__ = ["BenchConfig", "Round", "RunFigures", "linear_pipeline", "run_bench", "summary"]

PARTITIONS = 4
HOPS = 3
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_READY = "weir-bench-ready"


@dataclass
class BenchConfig:
    requests: int = 20_000
    probe: int = 200
    rounds: int = 3
    warmup: int = 500
    tracing_off: bool = False
    """Also run weir with trace events and spans off (the tracing cost)."""
    two_workers: bool = False
    """Also run weir with two worker processes in one group (the scaling ratio)."""
    confluent: bool = False
    """Also run the chain on confluent-kafka (librdkafka) instead of aiokafka."""
    bootstrap: str | None = None
    variants: dict[str, dict[str, str]] = field(default_factory=dict)
    """More weir runs, by name: environment overrides (``WEIR_GC_GEN0_THRESHOLD=0``...);
    ``WEIR_BENCH_TREE=<dir>`` runs that worker from another checkout (a baseline)."""
    profile: str | None = None
    """Sample the (first) weir worker during each burst; write ``<profile>-r<round>.txt``."""
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
    submit_s: float
    """How long the driver took to hand the burst to the broker."""
    probe_p50_ms: float
    probe_p99_ms: float
    peak_rss_mb: float
    processes: int = 1


@dataclass
class Round:
    runs: list[RunFigures] = field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from ``/proc``."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


# -- the child processes ---------------------------------------------------------------


class Sampler:
    """An in-process sampling profiler: SIGPROF every ``interval`` CPU seconds, plus GC time.

    py-spy's samples land on syscall exits on this VM; this one reads the interrupted
    Python stack itself (the handler runs on the main thread, the event loop's).
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.samples = 0
        self.own: dict[str, int] = {}
        self.inclusive: dict[str, int] = {}
        self.gc_s: dict[int, float] = {}
        self.gc_count: dict[int, int] = {}
        self._gc_started = 0.0

    def start(self) -> None:
        import gc

        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        gc.callbacks.append(self._gc)

    def stop(self) -> None:
        import gc

        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            gen = info.get("generation", -1)
            self.gc_s[gen] = self.gc_s.get(gen, 0.0) + time.process_time() - self._gc_started
            self.gc_count[gen] = self.gc_count.get(gen, 0) + 1

    def _sample(self, signum: int, frame: Any) -> None:
        self.samples += 1
        seen = set()
        leaf = True
        while frame is not None:
            code = frame.f_code
            where = f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_name}"
            if leaf:
                self.own[where] = self.own.get(where, 0) + 1
                leaf = False
            if where not in seen:
                seen.add(where)
                self.inclusive[where] = self.inclusive.get(where, 0) + 1
            frame = frame.f_back

    def report(self, top: int = 40) -> str:
        n = max(1, self.samples)
        cpu = n * self.interval
        lines = [f"{self.samples} samples (~{cpu:.1f} CPU s)"]
        gc_total = sum(self.gc_s.values())
        lines.append(
            f"GC: {gc_total:.2f} CPU s in collections ({gc_total / cpu:.1%} of sampled CPU); "
            + ", ".join(
                f"gen{g}: {self.gc_count[g]} x, {self.gc_s[g]:.2f} s" for g in sorted(self.gc_s)
            )
        )
        lines.append("-- own (leaf) --")
        for where, c in sorted(self.own.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{c / n:6.1%}  {where}")
        lines.append("-- inclusive --")
        for where, c in sorted(self.inclusive.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{c / n:6.1%}  {where}")
        return "\n".join(lines)


async def _weir_child(name: str, bootstrap: str, tracing: bool, profile: str | None = None) -> None:
    from weir.core.config import load_settings
    from weir.streams.worker import Worker

    settings = load_settings(
        kafka_bootstrap=bootstrap,
        partitions=PARTITIONS,
        trace_events=tracing,
        otel_enabled=tracing,
    )
    worker = Worker(linear_pipeline(name), settings)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
    await worker.start()
    sampler = None
    if profile:
        sampler = Sampler()
        loop.add_signal_handler(signal.SIGUSR1, sampler.start)
    print(_READY, flush=True)
    try:
        await worker.run()
    finally:
        if sampler is not None and profile:
            sampler.stop()
            Path(profile).write_text(sampler.report())  # noqa: ASYNC240 (exiting)


async def _chain_child(prefix: str, bootstrap: str) -> None:

    topics = chain_topics(prefix)
    following = dict(itertools.pairwise(topics))
    from weir.core.config import load_settings

    # The same linger as weir's worker producer, so only the work differs.
    linger_ms = load_settings().producer_linger_ms
    producer = KafkaConnection(bootstrap=bootstrap).producer(
        acks="all", enable_idempotence=True, linger_ms=linger_ms
    )
    consumer = KafkaConnection(bootstrap=bootstrap).consumer(
        *topics[:-1],
        group_id=f"{prefix}.chain",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
    )
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await producer.start()
    await consumer.start()
    print(_READY, flush=True)
    last_commit = time.monotonic()
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            futures = []
            for tp, records in batches.items():
                to = following[tp.topic]
                for record in records:
                    message = json.loads(record.value)
                    message["n"] += 1
                    value = json.dumps(message).encode()
                    futures.append(await producer.send(to, value=value, key=record.key))
            if futures:
                await asyncio.gather(*futures)
            if time.monotonic() - last_commit >= 1.0:
                await consumer.commit()
                last_commit = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()


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
    print(_READY, flush=True)
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


class _Reader:
    """Reads a results topic (``read_committed``), stamping each arrival by key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()
        self.waiting: dict[bytes, asyncio.Future[float]] = {}
        self.on_arrival: Callable[[int], None] = lambda n: None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import TopicPartition

        from weir.topics._aiokafka import rewind

        consumer = KafkaConnection(bootstrap=self.bootstrap).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._loop())

    def expect(self, n: int) -> None:
        self.count = 0
        self.target = n
        self.done.clear()

    async def _loop(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            got = 0
            for records in batches.values():
                for record in records:
                    got += 1
                    if self.waiting and record.key is not None:
                        fut = self.waiting.pop(record.key, None)
                        if fut is not None and not fut.done():
                            fut.set_result(now)
            if got:
                self.count += got
                self.on_arrival(got)
                if self.target and self.count >= self.target:
                    self.done.set()

    async def stop(self) -> None:
        from weir.topics._aiokafka import stop_consumer

        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await stop_consumer(self._consumer)


async def _spawn(*args: str, env_extra: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    env = dict(os.environ) | (env_extra or {})
    # WEIR_BENCH_TREE=<dir>: run this child from another checkout (a baseline, say).
    tree = env.get("WEIR_BENCH_TREE")
    if tree:
        env["PYTHONPATH"] = tree
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "weir.bench",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if not os.environ.get("WEIR_BENCH_DEBUG") else None,
        env=env,
        cwd=tree or None,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"bench child {args[0]} exited before it was ready")
            if line.decode().strip() == _READY:
                return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _run_one(
    system: str,
    round_no: int,
    cfg: BenchConfig,
    bootstrap: str,
    progress: Callable[[int], None],
) -> RunFigures:

    from weir.core.config import load_settings
    from weir.topics.admin import TopicAdmin
    from weir.topics.names import PipelineTopics, TopicSpec

    tag = uuid.uuid4().hex[:8]
    procs: list[asyncio.subprocess.Process] = []
    if system in ("chain", "chain-ck"):
        prefix = f"bench-{system}-{tag}"
        topics = chain_topics(prefix)
        settings = load_settings(kafka_bootstrap=bootstrap)
        async with TopicAdmin(settings) as admin:
            await admin.ensure(
                TopicSpec(t, PARTITIONS, 1, {"cleanup.policy": "delete"}) for t in topics
            )
        source, results = topics[0], topics[-1]
        procs.append(await _spawn(system, prefix, bootstrap))

        def encode(rid: str) -> bytes:
            return json.dumps({"id": rid, "n": 0}).encode()
    else:
        name = f"bench-{tag}"
        tracing = system != "weir-notrace"
        count = 2 if system == "weir-2w" else 1
        t = PipelineTopics(name)
        source, results = t.requests, t.results
        flags = [] if tracing else ["--no-tracing"]
        profiled = [f"--profile={cfg.profile}-{system}-r{round_no}.txt"] if cfg.profile else []
        extra = cfg.variants.get(system)
        procs.append(await _spawn("weir", name, bootstrap, *flags, *profiled, env_extra=extra))
        for _ in range(count - 1):
            procs.append(await _spawn("weir", name, bootstrap, *flags, env_extra=extra))

        def encode(rid: str) -> bytes:
            return json.dumps({"request_id": rid, "payload": {"n": 0}}).encode()

    producer = KafkaConnection(bootstrap=bootstrap).producer(
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    reader = _Reader(bootstrap, results)
    await reader.start()
    try:
        async with asyncio.timeout(cfg.timeout_s):
            # Warm-up: one request (the group has joined), then a small burst.
            await _one(producer, reader, source, encode, "warm-0")
            if cfg.warmup:
                await _burst(producer, reader, source, encode, cfg.warmup, "warm")
            # The burst.
            reader.on_arrival = progress
            if cfg.profile and system.startswith("weir"):
                procs[0].send_signal(signal.SIGUSR1)
            cpu0 = sum(process_cpu_s(p.pid) for p in procs)
            seconds, submit_s = await _burst(producer, reader, source, encode, cfg.requests, "b")
            cpu_s = sum(process_cpu_s(p.pid) for p in procs) - cpu0
            reader.on_arrival = lambda n: None
            # Unloaded: one at a time.
            latencies = []
            for i in range(cfg.probe):
                latencies.append(await _one(producer, reader, source, encode, f"p-{i}"))
                progress(0)
            rss = max(peak_rss_mb(p.pid) for p in procs)
    finally:
        await reader.stop()
        await producer.stop()
        for p in procs:
            await _stop(p)
    return RunFigures(
        system=system,
        round=round_no,
        requests=cfg.requests,
        seconds=round(seconds, 3),
        rps=round(cfg.requests / seconds, 1),
        cpu_s=round(cpu_s, 3),
        cpu_ms_per_request=round(cpu_s * 1000 / cfg.requests, 4),
        submit_s=round(submit_s, 3),
        probe_p50_ms=round(percentile(latencies, 50), 2),
        probe_p99_ms=round(percentile(latencies, 99), 2),
        peak_rss_mb=round(rss, 1),
        processes=len(procs),
    )


async def _one(
    producer: Any, reader: _Reader, topic: str, encode: Callable[[str], bytes], rid: str
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
    reader: _Reader,
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
    if cfg.confluent:
        out.append("chain-ck")
    return out + list(cfg.variants)


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    import tempfile

    from weir.core.config import BrokerSettings, load_settings
    from weir.topics.broker import LocalBroker, free_port_pair

    settings = load_settings(broker=BrokerSettings(port=free_port_pair()), partitions=PARTITIONS)
    with tempfile.TemporaryDirectory(prefix="weir-bench-") as state:
        broker = LocalBroker(settings, state_dir=Path(state))
        broker.start()
        try:
            yield settings.bootstrap_servers
        finally:
            broker.stop()


def run_bench(
    cfg: BenchConfig,
    *,
    progress: Callable[[int], None] = lambda n: None,
    status: Callable[[str], None] = lambda s: None,
) -> list[Round]:
    """Start (or use) a broker and run ``cfg.rounds`` alternating rounds of every system."""
    with _broker(cfg.bootstrap) as bootstrap:

        async def main() -> list[Round]:
            rounds = []
            for r in range(1, cfg.rounds + 1):
                this = Round()
                for system in systems(cfg):
                    status(f"round {r}/{cfg.rounds}: {system}")
                    this.runs.append(await _run_one(system, r, cfg, bootstrap, progress))
                rounds.append(this)
            return rounds

        return asyncio.run(main())


def summary(rounds: list[Round]) -> dict[str, dict[str, float]]:
    """Per system: medians over rounds, and the median per-round ratio to the chain."""
    by_system: dict[str, list[RunFigures]] = {}
    chain_by_round = {}
    for rnd in rounds:
        for run in rnd.runs:
            by_system.setdefault(run.system, []).append(run)
            if run.system == "chain":
                chain_by_round[run.round] = run
    out: dict[str, dict[str, float]] = {}
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
            "probe_p50_ms": statistics.median(r.probe_p50_ms for r in runs),
            "probe_p99_ms": statistics.median(r.probe_p99_ms for r in runs),
            "p50_ratio": round(statistics.median(p50_ratios), 3) if p50_ratios else float("nan"),
            "peak_rss_mb": max(r.peak_rss_mb for r in runs),
            "submit_s": statistics.median(r.submit_s for r in runs),
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


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m weir.bench")
    parser.add_argument("kind", choices=["weir", "chain", "chain-ck"])
    parser.add_argument("name")
    parser.add_argument("bootstrap")
    parser.add_argument("--no-tracing", action="store_true")
    parser.add_argument("--profile", help="write a sampling profile here (starts on SIGUSR1)")
    args = parser.parse_args(argv)
    if args.kind == "weir":
        asyncio.run(_weir_child(args.name, args.bootstrap, not args.no_tracing, args.profile))
    elif args.kind == "chain-ck":
        _confluent_child(args.name, args.bootstrap)
    else:
        asyncio.run(_chain_child(args.name, args.bootstrap))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
