"""The ``lag`` of routing rules: the pipeline group's lag for the step, across all workers.

A rule such as ``lag > 200`` must see the work waiting for the step wherever it
waits, not only on this worker's partitions: otherwise each of N workers sees
about 1/N of it, and a worker whose partitions happen to be empty never sheds
load.  ``GroupLag`` keeps the last group-wide lag per pipeline (the same numbers
as ``weir lag``, from ``weir.topics.lag``), asked of the broker in the
background at most every ``refresh_s`` seconds: a routing decision only reads
what is known and never waits for the broker.  Until the first answer (and when
the broker cannot be asked) the rules see this worker's own lag for the step.
A root step run in the ingress (its own topic never written) counts the requests
topic's lag, as the worker's own lag does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from weir.core.config import WeirSettings
from weir.topics.lag import LagReader, PartitionLag, step_lags
from weir.topics.names import INGRESS, PipelineTopics

__all__ = ["GroupLag"]

log = logging.getLogger("weir.models")


class GroupLag:
    """Last known group-wide lag per step of the pipelines this worker routes for."""

    def __init__(self, settings: WeirSettings, *, refresh_s: float = 2.0) -> None:
        self.refresh_s = refresh_s
        self._reader = LagReader(settings)
        self._known: dict[str, tuple[dict[str, int], list[PartitionLag], float]] = {}
        self._asked: dict[str, float] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    def step_lag(self, pipeline: str, step: str) -> int | None:
        """The group's lag for ``step`` as last read (``None`` before the first answer).

        Asks the broker again in the background when the answer is ``refresh_s`` old.
        """
        if pipeline not in self._asking and (
            time.monotonic() - self._asked.get(pipeline, -1e9) >= self.refresh_s
        ):
            self._asked[pipeline] = time.monotonic()
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to refresh on
                task = asyncio.get_running_loop().create_task(
                    self._refresh(pipeline), name=f"weir-group-lag-{pipeline}"
                )
                self._asking[pipeline] = task
                task.add_done_callback(lambda _: self._asking.pop(pipeline, None))
        known = self._known.get(pipeline)
        if known is None:
            return None
        lags, rows, _ = known
        # A root step run in the ingress reads the requests topic: its own topic is never
        # written (as the worker's own lag counts the requests topic for it).
        own = PipelineTopics(pipeline).step(step)
        if all(r.end == 0 for r in rows if r.topic == own):
            return lags.get(step, 0) + lags.get(INGRESS, 0)
        return lags.get(step, 0)

    def partitions(self, pipeline: str) -> list[PartitionLag]:
        """The per-partition rows of the last answer for ``pipeline`` (empty before one)."""
        known = self._known.get(pipeline)
        return [] if known is None else list(known[1])

    async def _refresh(self, pipeline: str) -> None:
        try:
            async with self._lock, asyncio.timeout(10):
                rows = await self._reader.read(pipeline)
        except Exception as exc:  # broker errors of every kind: keep the last answer
            log.warning("cannot read the lag of pipeline %s: %s", pipeline, exc)
            with contextlib.suppress(Exception):
                await self._reader.aclose()  # a broken connection is made afresh next time
            return
        self._known[pipeline] = (step_lags(rows), rows, time.monotonic())

    async def aclose(self) -> None:
        for task in list(self._asking.values()):
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        await self._reader.aclose()
