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
