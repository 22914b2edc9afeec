"""Submitting requests to a pipeline and reading its results."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import (
    ConfigError,
    ResultTimeoutError,
    UnknownPipelineError,
    WeirError,
)
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import REQUEST_SCHEMA, Request, Result
from weir.schemas.registry import SchemaRegistry
from weir.streams.tokens import TokenStream
from weir.topics._aiokafka import retrying, rewind, stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["WeirClient"]


class WeirClient:
    """Produce requests and consume results; use as ``async with``.

    >>> async with WeirClient(settings) as client:                       # doctest: +SKIP
    ...     rid = await client.submit("greeter", {"name": "ada"})
    ...     result = (await client.wait_for("greeter", [rid]))[rid]
    """

    def __init__(self, settings: WeirSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._checked: set[str] = set()
        self._marks: dict[str, dict[int, int]] = {}
        """Results-topic end offsets per pipeline, taken before this client first submitted."""
        self._schema_ids: dict[str, int] = {}
        """The request schema's registry id per requests topic (with a schema registry)."""

    async def __aenter__(self) -> WeirClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is not None:
            return
        kafka = KafkaConnection.of(self.settings)
        producer = kafka.producer(acks="all", enable_idempotence=True, linger_ms=5)
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, KafkaConnectionError):
                raise await kafka.unavailable(exc) from exc
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _requests_topic(self, pipeline: str) -> str:
        topic = PipelineTopics(pipeline).requests
        if topic not in self._checked:
            async with TopicAdmin(self.settings) as admin:
                if not await admin.partitions([topic]):
                    raise UnknownPipelineError(
                        f"pipeline {pipeline!r} has no requests topic ({topic}): start a worker"
                        " for it first, or create its topics with 'weir topics create'"
                    )
            # Answers to what this client submits can only come after these offsets, so
            # wait_for() need not read the results topic from its beginning.
            self._marks[pipeline] = await self._result_ends(pipeline)
            self._checked.add(topic)
        return topic

    async def _result_ends(self, pipeline: str) -> dict[int, int]:
        topic = PipelineTopics(pipeline).results
        async with TopicAdmin(self.settings) as admin:
            count = (await admin.partitions([topic])).get(topic, 0)
        consumer = KafkaConnection.of(self.settings).consumer()
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(count)]
            ends = await retrying(lambda: consumer.end_offsets(tps), what="reading result ends")
        finally:
            await stop_consumer(consumer)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def submit(
        self,
        pipeline: str,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        options: Mapping[str, str] | None = None,
        fmt: Literal["json", "avro"] = "json",
    ) -> str:
        """Submit one request; return its request id once the broker has it."""
        ids = await self.submit_many(
            pipeline,
            [payload],
            request_ids=[request_id] if request_id else None,
            options=options,
            fmt=fmt,
        )
        return ids[0]

    async def submit_many(
        self,
        pipeline: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        request_ids: Iterable[str] | None = None,
        options: Mapping[str, str] | None = None,
        fmt: Literal["json", "avro"] = "json",
        on_sent: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Submit many requests (pipelined); return their ids in order.

        ``on_sent(n)`` is called as acknowledgements arrive (for progress bars).
        ``request_ids``, when given, must hold one id per payload.
        """
        payloads = list(payloads)
        given = list(request_ids) if request_ids is not None else None
        if given is not None and len(given) != len(payloads):
            raise ConfigError(
                f"submit_many got {len(payloads)} payload(s) but {len(given)} request id(s);"
                " give one id per payload, or none"
            )
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        topic = await self._requests_topic(pipeline)
        schema_id = await self._request_schema_id(topic) if fmt == "avro" else None
        ids: list[str] = []
        futures = []
        for n, payload in enumerate(payloads):
            rid = given[n] if given is not None else uuid.uuid4().hex
            request = Request(
                request_id=rid,
                pipeline=pipeline,
                payload=dict(payload),
                options=dict(options or {}),
            )
            raw = request.to_avro(schema_id=schema_id) if fmt == "avro" else request.to_json()
            fut = await self._producer.send(topic, value=raw, key=rid.encode())
            if on_sent is not None:
                fut.add_done_callback(lambda _: on_sent(1))
            futures.append(fut)
            ids.append(rid)
        await asyncio.gather(*futures)
        return ids

    async def _request_schema_id(self, topic: str) -> int | None:
        """The registry id Avro requests to ``topic`` are framed with (``None``: no registry)."""
        if self.settings.schema_registry_url is None:
            return None
        if topic not in self._schema_ids:
            async with SchemaRegistry.of(self.settings) as registry:
                self._schema_ids[topic] = await registry.register(f"{topic}-value", REQUEST_SCHEMA)
        return self._schema_ids[topic]

    async def enqueue(
        self,
        pipeline: str,
        payload: Mapping[str, Any],
        *,
        request_id: str,
        options: Mapping[str, str] | None = None,
        fmt: Literal["json", "avro"] = "json",
    ) -> asyncio.Future[Any]:
        """Hand one request to the producer; the returned future resolves on the broker's ack.

        For callers that stream many requests and track each acknowledgement
        (``weir submit --file`` keeps a resumable record of them).
        """
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        topic = await self._requests_topic(pipeline)
        request = Request(
            request_id=request_id,
            pipeline=pipeline,
            payload=dict(payload),
            options=dict(options or {}),
        )
        schema_id = await self._request_schema_id(topic) if fmt == "avro" else None
        raw = request.to_avro(schema_id=schema_id) if fmt == "avro" else request.to_json()
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value=raw, key=request_id.encode()
        )
        return future

    async def send_raw(self, pipeline: str, value: bytes | None, key: bytes | None = None) -> None:
        """Put arbitrary bytes on the requests topic (for tools and tests of bad input)."""
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        topic = await self._requests_topic(pipeline)
        await self._producer.send_and_wait(topic, value=value, key=key)

    async def results(
        self,
        pipeline: str,
        *,
        from_beginning: bool = True,
        follow: bool = True,
        idle_timeout: float | None = None,
        start: dict[int, int] | None = None,
    ) -> AsyncIterator[Result]:
        """Iterate result events of ``pipeline``.

        From the topic's beginning, its end (``from_beginning=False``), or the
        offsets in ``start`` (partition -> offset).  Without ``follow``, stops at
        the end of the topic as it was when called; with it, waits for new
        results (until ``idle_timeout`` seconds pass with none).
        """
        topic = PipelineTopics(pipeline).results
        consumer = KafkaConnection.of(self.settings).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            async with TopicAdmin(self.settings) as admin:
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

    def stream(
        self,
        request_id: str,
        *,
        pipeline: str,
        step: str | None = None,
        since_ms: int | None = None,
        idle_timeout: float = 60.0,
    ) -> TokenStream:
        """The token stream of one request, as streaming model calls publish it.

        ``async for chunk in client.stream(rid, pipeline="support")`` yields
        ``delta`` chunks, a ``restart`` chunk whenever the answer broke off and
        starts again (drop the text so far), and ends with ``done``.  Open it
        (``async with``) before submitting to be sure to miss nothing.
        """
        return TokenStream(
            self.settings,
            pipeline,
            request_id,
            step=step,
            since_ms=since_ms,
            idle_timeout=idle_timeout,
        )

    async def wait_for(
        self, pipeline: str, request_ids: Iterable[str], *, timeout: float = 60.0
    ) -> dict[str, Result]:
        """Wait until every id has a result; the first result per id wins.

        Reads from where the results topic ended before this client first
        submitted to ``pipeline``, or from its beginning if it never did.

        Raises ``ResultTimeoutError`` (a ``TimeoutError``) naming how many are missing.
        """
        wanted = set(request_ids)
        found: dict[str, Result] = {}
        try:
            async with asyncio.timeout(timeout):
                async for result in self.results(
                    pipeline, follow=True, start=self._marks.get(pipeline)
                ):
                    if result.request_id in wanted and result.request_id not in found:
                        found[result.request_id] = result
                        if len(found) == len(wanted):
                            break
        except TimeoutError:
            raise ResultTimeoutError(
                f"{len(wanted) - len(found)} of {len(wanted)} results of {pipeline!r} did not"
                f" arrive within {timeout:g}s; is a worker for it running ('weir worker')?"
            ) from None
        return found
