"""The ``lag`` of routing rules: the pipeline group's lag for the step, across all workers.

A rule such as ``lag > 200`` must see the work waiting for the step wherever it
waits, not only on this worker's partitions: otherwise each of N workers sees
about 1/N of it, and a worker whose partitions happen to be empty never sheds
load.  ``GroupLag`` keeps the last group-wide lag per pipeline (the same numbers
as ``weir lag``, from ``weir.topics.lag``), asked of the broker in the
background at most every ``refresh_s`` seconds: a routing decision only reads
what is known and never waits for the broker.  Until the first answer (and when
the broker cannot be asked) the rules see this worker's own lag for the step.
This worker's own part is always live: the answer is its lag now plus what the
others had waiting at the last read, so a burst on this worker is seen at once.
A root step run in the ingress (its own topic never written) counts the requests
topic's lag, as the worker's own lag does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

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
        self._own: dict[tuple[str, str], Callable[[], int]] = {}
        """This worker's live lag per (pipeline, step) routed for."""
        self._own_then: dict[tuple[str, str], int] = {}
        """This worker's lag per (pipeline, step) when the broker last answered."""

    def step_lag(self, pipeline: str, step: str, own: Callable[[], int]) -> int | None:
        """The group's lag for ``step`` (``None`` before the first answer from the broker).

        ``own`` is this worker's lag for the step, live: the answer is that plus what the
        other workers had waiting when the broker was last asked (the group's lag then less
        this worker's own then), so this worker's part is never ``refresh_s`` old.  Asks the
        broker again in the background when the answer is ``refresh_s`` old.
        """
        self._own[(pipeline, step)] = own
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
        group = lags.get(step, 0)
        # A root step run in the ingress reads the requests topic: its own topic is never
        # written (as the worker's own lag counts the requests topic for it).
        topic = PipelineTopics(pipeline).step(step)
        if all(r.end == 0 for r in rows if r.topic == topic):
            group += lags.get(INGRESS, 0)
        mine_then = self._own_then.get((pipeline, step), 0)
        return max(0, group - mine_then) + own()

    def partitions(self, pipeline: str) -> list[PartitionLag]:
        """The per-partition rows of the last answer for ``pipeline`` (empty before one)."""
        known = self._known.get(pipeline)
        return [] if known is None else list(known[1])

    async def _refresh(self, pipeline: str) -> None:
        # This worker's lag before the read: while work drains, the others' part is not
        # over-counted by what this worker finished during the read.
        mine = {k: own() for k, own in list(self._own.items()) if k[0] == pipeline}
        try:
            async with self._lock, asyncio.timeout(10):
                rows = await self._reader.read(pipeline)
                members = await self._reader.group_members(PipelineTopics(pipeline).consumer_group)
        except Exception as exc:  # broker errors of every kind: keep the last answer
            log.warning("cannot read the lag of pipeline %s: %s", pipeline, exc)
            with contextlib.suppress(Exception):
                await self._reader.aclose()  # a broken connection is made afresh next time
            return
        lags = step_lags(rows)
        if members <= 1:
            # Alone in the group: its own live lag is the group's, and fresher than any read.
            lags = {}
            mine = dict.fromkeys(mine, 0)
        self._known[pipeline] = (lags, rows, time.monotonic())
        self._own_then.update(mine)

    async def aclose(self) -> None:
        for task in list(self._asking.values()):
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        await self._reader.aclose()
