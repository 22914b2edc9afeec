"""Limits shared by a pipeline's workers: each takes 1/N of them, N the group's live members.

An endpoint's ``requests_per_minute`` and ``tokens_per_minute`` are for the whole
pipeline: inside a worker, each process's token bucket gets the limit divided by
the number of live members of the pipeline's consumer group, as the broker
reports it (``DescribeGroups``), asked again every ``refresh_s`` seconds.  The
buckets' burst is divided too, so N full buckets together hold one limit.

Why divide rather than coordinate every call through Kafka: a shared counter on
a topic costs a produce and a read per call (milliseconds on the hot path, and a
single partition every worker writes to), while Kafka already spreads the work
evenly — each member holds an equal share of partitions — and the group's
membership is the broker's own record of who is alive.  The cost: an idle
member's share goes unused (partitions with skewed load use less than the
limit), and for up to ``refresh_s`` after a member joins the others still use
their larger share (a member that leaves frees its share as late).
"""

from __future__ import annotations

import asyncio
import logging
import time

from weir.core.config import WeirSettings
from weir.topics.admin import TopicAdmin

__all__ = ["GroupMembers"]

log = logging.getLogger("weir.models")


class GroupMembers:
    """Last known member counts of consumer groups on one cluster, refreshed in the background."""

    def __init__(self, settings: WeirSettings, *, refresh_s: float = 2.0) -> None:
        self._settings = settings
        self.refresh_s = refresh_s
        self._known: dict[str, tuple[int, float]] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}

    async def count(self, group: str) -> int:
        """Members of ``group`` (at least 1: the caller is one); asks the broker when stale.

        The first ask for a group waits for the answer; later ones use the last
        answer while a fresh one is on its way.
        """
        known = self._known.get(group)
        if known is None:
            await self._ask(group)
            known = self._known.get(group, (1, 0.0))
        elif time.monotonic() - known[1] >= self.refresh_s and group not in self._asking:
            task = asyncio.create_task(self._ask(group), name=f"weir-members-{group}")
            self._asking[group] = task
            task.add_done_callback(lambda _: self._asking.pop(group, None))
        return known[0]

    async def _ask(self, group: str) -> None:
        try:
            async with asyncio.timeout(10), TopicAdmin(self._settings) as admin:
                members = await admin.group_members(group)
        except Exception as exc:  # broker errors of every kind: keep the last answer
            log.warning("cannot read the members of group %s: %s", group, exc)
            members = self._known.get(group, (1, 0.0))[0]
        self._known[group] = (max(1, members), time.monotonic())

    async def aclose(self) -> None:
        for task in list(self._asking.values()):
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
