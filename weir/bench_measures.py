"""What ``weir bench`` measures with: the results reader, /proc figures, child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from weir.bench_systems import PARTITIONS, READY
from weir.core.kafka import KafkaConnection

__all__ = [
    "BenchBroker",
    "ResultReader",
    "broker",
    "peak_rss_mb",
    "percentile",
    "process_cpu_s",
    "spawn",
    "stop",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident set (``VmHWM``; ``VmRSS``: the current one) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ResultReader:
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


async def spawn(*args: str, env_extra: dict[str, str] | None = None) -> asyncio.subprocess.Process:
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
            if line.decode().strip() == READY:
                return proc


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


class BenchBroker(NamedTuple):
    """The broker a bench runs against; ``pid`` when the bench started it (else ``None``)."""

    bootstrap: str
    pid: int | None


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[BenchBroker]:
    """The broker at ``bootstrap``, or a throw-away local one started for the bench."""
    if bootstrap:
        yield BenchBroker(bootstrap, None)
        return
    import tempfile

    from weir.core.config import BrokerSettings, load_settings
    from weir.topics.broker import LocalBroker, free_port_pair

    settings = load_settings(broker=BrokerSettings(port=free_port_pair()), partitions=PARTITIONS)
    with tempfile.TemporaryDirectory(prefix="weir-bench-") as state:
        broker = LocalBroker(settings, state_dir=Path(state))
        status = broker.start()
        try:
            yield BenchBroker(settings.bootstrap_servers, status.pid)
        finally:
            broker.stop()
