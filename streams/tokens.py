"""Token streams as a topic: published by streaming model calls, read by clients and SSE.

Every streamed model call inside a step publishes its chunks to the pipeline's
stream topic (``weir.<pipeline>.stream``), keyed by request id, so all chunks
of a request are on one partition, in order.  A record is one JSON object:

    {"request_id", "step", "attempt", "call", "try", "seq", "type", "text",
     "endpoint", "error_type", "usage", "cost_usd", "ts"}

``type`` is ``delta`` (more text), ``restart`` (the answer broke off and starts
again: drop the text so far), ``abort`` (the call failed for good or was
cancelled, e.g. by the step's timeout; a retry of the step may follow) or
``done`` (the answer is complete; ``usage`` and ``cost_usd`` are exact).
Workers publish them with ``StreamPublisher`` (``weir.streams._stream_publisher``).

Clients read a request's stream with ``TokenStream`` (``WeirClient.stream``):
it yields ``TokenChunk``s and turns any change of call or try after text was
seen into a restart, so even a worker that died mid-answer (and never wrote
``abort``) shows up as a restart, never as a silently spliced answer.  After
an ``abort`` it also watches the pipeline's results topic: a retry's records
carry on as usual, but once the request has its result without a ``done``
(it was dead-lettered, or its step's fallback answered), iteration ends with
``StreamAbortedError`` (``reason``: the request's error type).  The worker's
HTTP server serves the same as Server-Sent Events on
``GET /streams/{pipeline}/{request_id}`` (an ``abort`` event ends that; see
``weir.sse``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import StreamAbortedError, UnknownPipelineError, WeirError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Result, now_ms
from weir.streams._stream_publisher import partition_of
from weir.topics._aiokafka import stop_consumer
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["TokenChunk", "TokenStream"]


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """One event of a request's token stream as a client sees it."""

    kind: Literal["delta", "restart", "done"]
    text: str
    step: str
    attempt: int
    endpoint: str
    seq: int
    error_type: str | None = None
    """Why the answer restarted."""
    usage: dict[str, Any] | None = None
    """``done``: the call's tokens."""
    cost_usd: Decimal | None = None
    published_at: int = 0
    """Epoch milliseconds when the worker published the record."""
    record: dict[str, Any] = field(default_factory=dict, repr=False)


class TokenStream:
    """The token stream of one request; iterate it (``async for``) until the answer is done.

    Open it before submitting the request to miss nothing, or give ``since_ms``
    (epoch milliseconds; default: ten minutes ago).  ``text`` is the answer so
    far (emptied on a restart).  Iteration ends after the first ``done`` chunk
    (of ``step``, if given); with ``StreamAbortedError`` when the stream was
    aborted and the request then got its result anyway (no retry followed);
    ``TimeoutError`` after ``idle_timeout`` seconds without a record.
    """

    def __init__(
        self,
        settings: WeirSettings,
        pipeline: str,
        request_id: str,
        *,
        step: str | None = None,
        since_ms: int | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self._settings = settings
        self._topic = PipelineTopics(pipeline).stream
        self._pipeline = pipeline
        self._key = request_id.encode()
        self._step = step
        self._since = since_ms if since_ms is not None else now_ms() - 600_000
        self._idle = idle_timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._results: AIOKafkaConsumer | None = None
        """Follows the results topic once the stream was aborted."""
        self.text = ""
        self.restarts = 0

    async def __aenter__(self) -> TokenStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._consumer is not None:
            return
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([self._topic])).get(self._topic)
        if not count:
            raise UnknownPipelineError(
                f"pipeline {self._pipeline!r} has no stream topic ({self._topic}): start a worker"
            )
        tp = TopicPartition(self._topic, partition_of(self._key, count))
        consumer = KafkaConnection.of(self._settings).consumer(
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            # The end first: a record produced between the two lookups is then read, not
            # skipped (the time lookup found nothing, and the end would be past it).
            end = (await consumer.end_offsets([tp]))[tp]
            at = (await consumer.offsets_for_times({tp: self._since})).get(tp)
            consumer.seek(tp, at.offset if at is not None else end)
        except BaseException:
            await stop_consumer(consumer)
            raise
        self._consumer = consumer

    async def stop(self) -> None:
        for consumer in (self._consumer, self._results):
            if consumer is not None:
                with contextlib.suppress(KafkaError):
                    await stop_consumer(consumer)
        self._consumer = self._results = None

    async def _watch_results(self) -> AIOKafkaConsumer:
        """A reader of the pipeline's results (committed ones) since ``since_ms``."""
        topic = PipelineTopics(self._pipeline).results
        async with TopicAdmin(self._settings) as admin:
            count = (await admin.partitions([topic])).get(topic, 0)
        consumer = KafkaConnection.of(self._settings).consumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="latest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(tps)
            # The ends first (see ``start``): the result may be committed right now.
            ends = await consumer.end_offsets(tps)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, self._since))
            for tp in tps:  # explicit offsets: a position reset could skip the result
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
        except BaseException:
            await stop_consumer(consumer)
            raise
        return consumer

    async def _result(self) -> Result | None:
        """The request's result, if the results topic has it by now."""
        if self._results is None:
            self._results = await self._watch_results()
        for records in (await self._results.getmany(timeout_ms=100)).values():
            for raw in records:
                if raw.key != self._key or raw.value is None:
                    continue
                with contextlib.suppress(ValueError, WeirError):
                    return Result.from_wire(raw.value)
        return None

    def _aborted(self, abort: dict[str, Any], result: Result) -> StreamAbortedError:
        where = f"the token stream of request {self._key.decode()} was aborted"
        if abort.get("error_type"):
            where += f" ({abort['error_type']})"
        if result.status == "FAILURE":
            return StreamAbortedError(
                f"{where} and the request failed at step {result.failed_step!r}"
                f" ({result.error_type}): {result.error_message}",
                reason=result.error_type,
            )
        return StreamAbortedError(
            f"{where} and the request ended without a streamed answer (a step's fallback?):"
            " read its result"
        )

    def __aiter__(self) -> AsyncIterator[TokenChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[TokenChunk]:
        owned = self._consumer is None
        await self.start()
        consumer = self._consumer
        assert consumer is not None
        (tp,) = consumer.assignment()
        current: tuple[str, int, str, int] | None = None
        aborted: dict[str, Any] | None = None  # the last record, while it is an abort
        last_abort: dict[str, Any] = {}
        finished: tuple[Result, int] | None = None
        """The request's result, and where the stream ended when it was seen."""
        last = time.monotonic()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                if batch:
                    last = time.monotonic()
                for records in batch.values():
                    for raw in records:
                        if raw.key != self._key or raw.value is None:
                            continue
                        try:
                            rec = json.loads(raw.value)
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            continue
                        if self._step is not None and rec.get("step") != self._step:
                            continue
                        ident = (
                            str(rec.get("step")),
                            int(rec.get("attempt", 0)),
                            str(rec.get("call")),
                            int(rec.get("try", 0)),
                        )
                        kind = rec.get("type")
                        starts_over = kind in ("restart", "abort") or (
                            current is not None and ident != current
                        )
                        if starts_over and self.text:
                            # A restart, an aborted attempt, or text from another try or
                            # attempt (a worker died mid-answer): the answer starts over.
                            self.text = ""
                            self.restarts += 1
                            yield self._chunk("restart", rec)
                        current = ident
                        aborted = rec if kind == "abort" else None
                        last_abort = rec if kind == "abort" else last_abort
                        if kind == "delta":
                            self.text += str(rec.get("text", ""))
                            yield self._chunk("delta", rec)
                        elif kind == "done":
                            yield self._chunk("done", rec)
                            return
                if aborted is not None and finished is None:
                    # Nothing follows an abort once the request has its result; but what
                    # was published before that result must still be read.
                    result = await self._result()
                    if result is not None:
                        finished = (result, (await consumer.end_offsets([tp]))[tp])
                if finished is not None:
                    if await consumer.position(tp) >= finished[1]:
                        raise self._aborted(last_abort, finished[0])
                elif not batch and time.monotonic() - last > self._idle:
                    raise TimeoutError(
                        f"no token of request {self._key.decode()} on {self._topic}"
                        f" for {self._idle:g}s"
                    )
        finally:
            if owned:
                await self.stop()

    @staticmethod
    def _chunk(kind: Literal["delta", "restart", "done"], rec: dict[str, Any]) -> TokenChunk:
        cost = rec.get("cost_usd")
        return TokenChunk(
            kind=kind,
            text=str(rec.get("text", "")) if kind == "delta" else "",
            step=str(rec.get("step", "")),
            attempt=int(rec.get("attempt", 0)),
            endpoint=str(rec.get("endpoint", "")),
            seq=int(rec.get("seq", 0)),
            error_type=rec.get("error_type") or (None if kind != "restart" else "aborted"),
            usage=rec.get("usage"),
            cost_usd=Decimal(cost) if cost is not None else None,
            published_at=int(rec.get("ts", 0)),
            record=rec,
        )
