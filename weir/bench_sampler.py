"""An in-process sampling profiler for ``weir bench --profile``."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

__all__ = ["Sampler"]


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
        self.kafka_requests: dict[str, int] = {}
        """Requests this process sent to the brokers while sampling, by kind."""
        self.produced: dict[str, list[int]] = {}
        """Per topic (its name after the first dot): record batches, records and bytes produced."""
        self._send: Any = None

    def start(self) -> None:
        import gc

        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        gc.callbacks.append(self._gc)
        self._count_kafka_requests()

    def stop(self) -> None:
        import gc

        from aiokafka.conn import AIOKafkaConnection

        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc)
        if self._send is not None:
            AIOKafkaConnection.send = self._send
            self._send = None

    def _count_kafka_requests(self) -> None:
        """Count every request aiokafka sends (the broker's CPU goes per request)."""
        from aiokafka.conn import AIOKafkaConnection

        send = self._send = AIOKafkaConnection.send
        counts = self.kafka_requests
        produced = self.produced

        def counted(conn: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            kind = type(request).__name__
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "ProduceRequest":
                # aiokafka keeps a request's data private: read it, never fail the send.
                for topic, partitions in getattr(request, "_topics", None) or []:
                    # The bench names each run's topics after a fresh tag: drop it.
                    name = topic.split(".", 1)[-1]
                    seen = produced.setdefault(name, [0, 0, 0])
                    seen[0] += len(partitions)
                    seen[1] += sum(_records(data) for _, data in partitions)
                    seen[2] += sum(len(data) for _, data in partitions)
            return send(conn, request, *args, **kwargs)

        AIOKafkaConnection.send = counted

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
            if code.co_filename == "<string>" and frame.f_back is not None:
                # Generated code (dataclass and namedtuple methods): say whose, by its caller.
                where += f" <- {frame.f_back.f_code.co_name}"
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
        if self.kafka_requests:
            lines.append(
                "Kafka requests sent: "
                + ", ".join(
                    f"{kind} {c}"
                    for kind, c in sorted(self.kafka_requests.items(), key=lambda kv: -kv[1])
                )
            )
        for topic, (batches, records, size) in sorted(self.produced.items()):
            lines.append(
                f"  produced to {topic}: {batches} batches, {records} records, {size / 1e6:.2f} MB"
            )
        lines.append("-- own, by module --")
        for module, c in sorted(_by_module(self.own).items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{c / n:6.1%}  {module}")
        lines.append("-- own (leaf) --")
        for where, c in sorted(self.own.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{c / n:6.1%}  {where}")
        lines.append("-- inclusive --")
        for where, c in sorted(self.inclusive.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{c / n:6.1%}  {where}")
        return "\n".join(lines)


def _by_module(own: dict[str, int]) -> dict[str, int]:
    """Leaf samples summed per source file (``weir`` files by their path in the package)."""
    modules: dict[str, int] = {}
    for where, c in own.items():
        path = where.split(":", 1)[0]
        if "/weir/" in path:
            path = "weir/" + path.rsplit("/weir/", 1)[1]
        elif "/lib/python3" in path:
            path = "stdlib/" + path.rsplit("/", 1)[1]
        modules[path] = modules.get(path, 0) + c
    return modules


def _records(batch: bytes) -> int:
    """The record count in a v2 record batch's header (bytes 57-60)."""
    return int.from_bytes(batch[57:61], "big") if len(batch) >= 61 else 0
