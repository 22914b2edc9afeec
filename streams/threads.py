"""The threads that run synchronous steps, and the ones timed-out steps still hold.

A thread cannot be interrupted: when a synchronous step outlives its timeout,
the attempt fails with ``step_timeout`` but the function keeps running in its
thread until it returns by itself, perhaps never.  ``StepThreads`` counts such
abandoned threads ("stuck steps") until they do return.  Once
``stuck_max`` of them are stuck, synchronous steps fail fast with the
retriable ``step_threads_exhausted`` instead of queueing behind threads that
may never come back; the worker's ``/stats`` and ``/health`` name each stuck
step and for how long it has been running.

>>> from concurrent.futures import ThreadPoolExecutor
>>> threads = StepThreads(ThreadPoolExecutor(max_workers=2), stuck_max=1)
>>> threads.stuck(), threads.stuck_max
([], 1)
>>> threads.shutdown()
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from weir.core.errors import StepThreadsExhaustedError

__all__ = ["StepThreads", "StuckStep"]

log = logging.getLogger("weir.worker")


@dataclass(frozen=True)
class StuckStep:
    """A synchronous step attempt that outlived its timeout and still holds a thread."""

    step: str
    request_id: str
    attempt: int
    started: float
    """``time.monotonic()`` when the call started."""

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        running = (time.monotonic() if now is None else now) - self.started
        return {
            "step": self.step,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "running_s": round(running, 3),
        }


class StepThreads:
    """A thread pool for synchronous steps, with a budget of threads stuck steps may hold."""

    def __init__(self, pool: ThreadPoolExecutor, *, stuck_max: int) -> None:
        self.pool = pool
        self.stuck_max = stuck_max
        self.abandoned_total = 0
        """Calls abandoned after their timeout since start."""
        self.refused_total = 0
        """Calls refused with ``step_threads_exhausted`` since start."""
        self._stuck: dict[int, StuckStep] = {}
        self._ids = itertools.count()
        # Abandoned calls finish on their own threads, which update the table.
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.pool._max_workers

    def stuck(self) -> list[StuckStep]:
        """The stuck steps, longest-running first."""
        with self._lock:
            return sorted(self._stuck.values(), key=lambda s: s.started)

    def submit(
        self, fn: Callable[[], Any], *, step: str, request_id: str, attempt: int
    ) -> Future[Any]:
        """Start ``fn`` on a thread; ``StepThreadsExhaustedError`` when the budget is used up."""
        with self._lock:
            held = len(self._stuck)
        if held >= self.stuck_max:
            self.refused_total += 1
            raise StepThreadsExhaustedError(
                f"step {step!r} was not started: {held} synchronous step calls that timed out"
                f" still hold their threads (step_stuck_threads_max = {self.stuck_max});"
                f" the longest-running is {self._describe(self.stuck()[0])}"
            )
        return self.pool.submit(fn)

    def abandon(
        self, future: Future[Any], *, step: str, request_id: str, attempt: int, started: float
    ) -> bool:
        """After a timeout: count ``future``'s thread as stuck until the call returns.

        Returns ``False`` when the call had not started (it is cancelled, holding nothing).
        """
        if future.cancel() or future.done():
            return False
        key = next(self._ids)
        entry = StuckStep(step, request_id, attempt, started)
        with self._lock:
            self._stuck[key] = entry
            self.abandoned_total += 1
            held = len(self._stuck)
        log.warning(
            "step %r (request %s, attempt %d) timed out but its thread is still running;"
            " %d of at most %d threads are held by stuck steps",
            step,
            request_id,
            attempt,
            held,
            self.stuck_max,
        )

        def returned(_: Future[Any]) -> None:
            with self._lock:
                gone = self._stuck.pop(key, None)
            if gone is not None:
                log.info(
                    "stuck step %r (request %s) returned after %.1fs; its thread is free",
                    step,
                    request_id,
                    time.monotonic() - started,
                )

        future.add_done_callback(returned)
        return True

    @staticmethod
    def _describe(entry: StuckStep) -> str:
        running = time.monotonic() - entry.started
        return f"{entry.step!r} (request {entry.request_id}), running for {running:.0f}s"

    def shutdown(self) -> None:
        """Stop taking calls; threads of stuck steps are not waited for."""
        self.pool.shutdown(wait=False, cancel_futures=True)
