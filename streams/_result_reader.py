"""``ResultReader``: a client reading many of a pipeline's results (a topic scan, a set of ids).

``scan`` reads a pipeline's results topic with a consumer of its own
(``WeirClient.results``); ``wait_for`` awaits a set of request ids, from the
client's result listener when it watches the pipeline, else by scanning the
topic from its beginning (``WeirClient.wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import ResultTimeoutError, UnknownPipelineError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Result
from weir.streams._result_listener import ResultListener
from weir.topics._aiokafka import retrying, rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["ResultReader"]


class ResultReader:
    """Scans results topics and waits for sets of results, for one ``WeirClient``."""

    def __init__(self, settings: WeirSettings, listener: ResultListener) -> None:
        self._settings = settings
        self._listener = listener

    async def scan(
        self,
        pipeline: str,
        *,
        from_beginning: bool,
        follow: bool,
        idle_timeout: float | None,
        start: dict[int, int] | None,
    ) -> AsyncIterator[Result]:
        """Iterate result events of ``pipeline`` (see ``WeirClient.results``)."""
        topic = PipelineTopics(pipeline).results
        consumer = KafkaConnection.of(self._settings).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            async with TopicAdmin(self._settings) as admin:
                count = (await admin.partitions([topic])).get(topic)
            if not count:
                raise UnknownPipelineError(f"pipeline {pipeline!r} has no results topic ({topic})")
            tps = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(tps)
            if start is not None:
                await rewind(consumer, tps)
                for tp in tps:
                    if tp.partition in start:
                        consumer.seek(tp, start[tp.partition])
            elif from_beginning:
                await rewind(consumer, tps)
            else:
                ends = await retrying(lambda: consumer.end_offsets(tps), what="reading ends")
                for tp in tps:
                    consumer.seek(tp, ends[tp])
            end = await consumer.end_offsets(tps) if not follow else None
            last = time.monotonic()
            while True:
                if end is not None and all([await consumer.position(tp) >= end[tp] for tp in tps]):
                    return
                batch = await consumer.getmany(timeout_ms=200)
                if not batch:
                    if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                        return
                    continue
                last = time.monotonic()
                for records in batch.values():
                    for record in records:
                        if record.value is not None:
                            yield Result.from_wire(record.value)
        finally:
            with contextlib.suppress(KafkaError):
                await stop_consumer(consumer)

    async def wait_for(
        self, pipeline: str, request_ids: Iterable[str], *, timeout: float
    ) -> dict[str, Result]:
        """Wait until every id has a result (see ``WeirClient.wait_for``)."""
        wanted = list(dict.fromkeys(request_ids))
        found: dict[str, Result] = {}
        try:
            async with asyncio.timeout(timeout):
                if pipeline in self._listener.watched:

                    async def one(rid: str) -> None:
                        found[rid] = await self._listener.result(rid, timeout=timeout + 1)

                    await asyncio.gather(*(one(rid) for rid in wanted))
                else:
                    remaining = set(wanted)
                    async for result in self.scan(
                        pipeline, from_beginning=True, follow=True, idle_timeout=None, start=None
                    ):
                        if result.request_id in remaining:
                            remaining.discard(result.request_id)
                            found[result.request_id] = result
                            if not remaining:
                                break
        except TimeoutError:
            raise ResultTimeoutError(
                f"{len(wanted) - len(found)} of {len(wanted)} results of {pipeline!r} did not"
                f" arrive within {timeout:g}s; is a worker for it running ('weir worker')?"
            ) from None
        return found
