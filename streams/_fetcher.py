"""The fetch loop: takes fetched records into tasks, within the worker's slots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.core.config import WeirSettings
from weir.schemas.messages import now_ms
from weir.streams._failures import NOT_BEFORE_HEADER
from weir.streams._partitions import Partitions
from weir.streams._quiet import QuietPartitions
from weir.streams._record_tasks import RecordTasks, Route
from weir.streams._runtime import Record

__all__ = ["Fetcher"]


class Fetcher:
    """Reads the worker's topics and starts their records (see ``RecordTasks``).

    A record of a partition that is not (or no longer) taken is given back; a retry
    topic's record that is not yet due pauses its partition until it is.  Retry
    partitions with nothing new are fetched only every ``retry_poll_ms``
    (``weir.streams._quiet``).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        routes: Mapping[str, Route],
        partitions: Partitions,
        records: RecordTasks,
        settings: WeirSettings,
        stopping: asyncio.Event,
    ) -> None:
        self.consumer = consumer
        self._routes = routes
        self._partitions = partitions
        self._records = records
        self.settings = settings
        self._stopping = stopping
        self.quiet = QuietPartitions(
            consumer,
            [topic for topic, route in routes.items() if route.delayed],
            lambda: partitions.assigned,
            interval_s=settings.retry_poll_ms / 1000,
        )

    async def run(self) -> None:
        consumer = self.consumer
        slots = self._partitions.slots
        quiet = self.quiet if self.quiet.enabled else None
        while not self._stopping.is_set():
            batches = await consumer.getmany(
                timeout_ms=200, max_records=self.settings.max_poll_records
            )
            if quiet is not None:
                quiet.tick(batches)
            for tp, records in batches.items():
                route = self._routes[tp.topic]
                if route.prepare is not None:
                    await self._take_batch(tp, records, route)
                    continue
                for record in records:
                    if not self._partitions.takes(tp):
                        self._unfetch(tp, record.offset)
                        break
                    if route.delayed and (due := _not_before(record)) > now_ms():
                        self._defer(tp, record.offset, due)
                        break
                    # Back-pressure: wait for a free slot before taking more work.
                    await slots.acquire()
                    if not self._partitions.takes(tp):
                        slots.release()
                        self._unfetch(tp, record.offset)
                        break
                    self._records.start(tp, record, route)

    async def _take_batch(self, tp: TopicPartition, records: list[Record], route: Route) -> None:
        """Start one task for the records of ``tp`` that may start now (see ``Route``)."""
        take = []
        for record in records:
            if not self._partitions.takes(tp):
                self._unfetch(tp, record.offset)
                break
            if route.delayed and (due := _not_before(record)) > now_ms():
                self._defer(tp, record.offset, due)
                break
            take.append(record)
        if not take:
            return
        # Records this worker already ran in place: a header check, before any decode.
        skipped = {r.offset for r in take if self._records.skips(r)}
        if len(skipped) == len(take):
            self._records.start_batch(tp, take, route, 0, skipped=skipped)
            return
        # Back-pressure: a batch holds a slot per record (at most all of them), so no more
        # than max_in_flight records are held, batched or not.
        slots = min(len(take) - len(skipped), self.settings.max_in_flight)
        for _ in range(slots):
            await self._partitions.slots.acquire()
        if not self._partitions.takes(tp):
            for _ in range(slots):
                self._partitions.slots.release()
            self._unfetch(tp, take[0].offset)
            return
        self._records.start_batch(tp, take, route, slots, skipped=skipped)

    def _unfetch(self, tp: TopicPartition, offset: int) -> None:
        """Give back records of a partition that is not (or no longer) ours to process.

        Still assigned (its tables are being restored): rewind, so nothing is
        skipped.  Revoked: drop them; the new owner reads from the committed offset.
        """
        consumer = self.consumer
        if tp in consumer.assignment() and tp not in self._partitions.revoking:
            consumer.seek(tp, offset)

    def _defer(self, tp: TopicPartition, offset: int, due: int) -> None:
        """Hold a retry partition until its head record is due; nothing behind it is lost."""
        consumer = self.consumer
        consumer.pause(tp)
        self.quiet.defer(tp)
        consumer.seek(tp, offset)
        delay = max(0.0, (due - now_ms()) / 1000)
        asyncio.get_running_loop().call_later(delay, self._resume, tp)

    def _resume(self, tp: TopicPartition) -> None:
        if tp in self._partitions.assigned and not self._stopping.is_set():
            self.consumer.resume(tp)
            self.quiet.due(tp)


def _not_before(record: Record) -> int:
    for key, value in record.headers or ():
        if key == NOT_BEFORE_HEADER:
            with contextlib.suppress(ValueError):
                return int(value)
    return 0
