"""What the worker does when the group gives it partitions or takes them away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.streams._partitions import Partitions
from weir.streams._record_tasks import Route
from weir.streams.answer import AnswerStage
from weir.streams.runner import StepRunner
from weir.topics._aiokafka import place
from weir.topics.names import ANSWER, INGRESS

__all__ = ["Rebalance"]

log = logging.getLogger("weir.worker")

_ASSIGN_ATTEMPTS = 4


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drains and commits revoked partitions; restores tables before assigned ones resume."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        partitions: Partitions,
        routes: Mapping[str, Route],
        runners: Mapping[str, StepRunner],
        answers: AnswerStage | None,
        settings: WeirSettings,
        drain: Callable[[list[asyncio.Task[None]]], Awaitable[None]],
        commit: Callable[[Iterable[TopicPartition]], Awaitable[None]],
        request_stop: Callable[[], None],
    ) -> None:
        self._consumer = consumer
        self._partitions = partitions
        self._routes = routes
        self._runners = runners
        self._answers = answers
        self.settings = settings
        self._drain = drain
        self._commit = commit
        self._request_stop = request_stop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        revoked = set(revoked)
        # No new work on them from here on; what is in flight may finish and send.
        held = self._partitions
        held.revoking |= revoked
        try:
            await self._drain(held.tasks(revoked))
            with contextlib.suppress(KafkaError):
                await self._commit(revoked)
        finally:
            held.drop(revoked)
            held.revoking -= revoked
        by_stage = self._by_stage(revoked)
        for stage, partitions in by_stage.items():
            if stage == ANSWER and self._answers is not None:
                await self._answers.revoked(partitions)
            elif (runner := self._runners.get(stage)) is not None and runner.join is not None:
                runner.join.drop(partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assigned = set(assigned)
        consumer = self._consumer
        # aiokafka starts fetching new partitions while this callback still runs; hold
        # them until their tables are restored, so no record is handled (or skipped) early.
        consumer.pause(*assigned)
        backoff = 1.0
        for attempt in range(1, _ASSIGN_ATTEMPTS + 1):
            try:
                await self._take(assigned)
                return
            except Exception:
                # aiokafka would log and swallow this, leaving the partitions paused for good.
                log.exception(
                    "taking %d partitions failed (attempt %d of %d)",
                    len(assigned),
                    attempt,
                    _ASSIGN_ATTEMPTS,
                )
                await asyncio.sleep(backoff)
                backoff *= 2
        log.critical("could not take the assigned partitions; stopping the worker")
        self._request_stop()

    async def _take(self, assigned: set[TopicPartition]) -> None:
        """Place, restore the tables of, and resume newly assigned partitions."""
        consumer = self._consumer
        await place(consumer, assigned)
        self._partitions.add(assigned)
        # Tables are restored before any record of their partition is processed.
        for stage, partitions in self._by_stage(assigned).items():
            if stage == ANSWER and self._answers is not None:
                await self._answers.assigned(partitions)
            elif (runner := self._runners.get(stage)) is not None and runner.join is not None:
                waiting = await runner.join.restore(KafkaConnection.of(self.settings), partitions)
                if waiting:
                    log.info("restored %d waiting joins of step %s", waiting, stage)
        self._partitions.assigned |= assigned
        consumer.resume(*assigned)
        log.info(
            "assigned %d partitions (%d in total)", len(assigned), len(self._partitions.assigned)
        )

    def _by_stage(self, tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
        """Partitions of stateful stages' main input topics (joins, answers), by stage."""
        out: dict[str, list[int]] = {}
        for tp in tps:
            route = self._routes.get(tp.topic)
            if route is None or route.delayed or route.stage == INGRESS:
                continue
            out.setdefault(route.stage, []).append(tp.partition)
        return out
