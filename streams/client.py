"""Submitting requests to a pipeline and awaiting their results, for applications.

One ``WeirClient`` holds one producer and one result listener (a single
consumer for every pipeline it submits to), so a web application makes one
client at start-up and awaits each request's result with ``result()``; no
call opens a consumer of its own except ``results()`` (a scan) and
``stream()`` (a request's tokens).  ``SyncWeirClient`` wraps it for scripts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from weir.core.config import WeirSettings
from weir.core.errors import (
    ConfigError,
    ResultTimeoutError,
    UnknownPipelineError,
    WeirError,
)
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import REQUEST_SCHEMA, Request, Result, now_ms
from weir.schemas.registry import SchemaRegistry
from weir.streams._result_listener import ResultListener
from weir.streams._result_reader import ResultReader
from weir.streams.conversation import conversation_id_of
from weir.streams.tokens import TokenStream
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics

__all__ = ["WeirClient"]


class WeirClient:
    """Produce requests and await their results; use as ``async with``.

    >>> async with WeirClient(settings) as client:                       # doctest: +SKIP
    ...     rid = await client.submit("greeter", {"name": "ada"})
    ...     result = await client.result(rid, timeout=30)

    ``keep_results`` bounds the results kept for requests nobody awaits yet
    (the oldest are dropped first).
    """

    stream_lookback_ms = 60_000
    """How far before a request's submission its token stream is read (clock skew)."""

    def __init__(self, settings: WeirSettings, *, keep_results: int = 10_000) -> None:
        self.settings = settings
        self.client_id = f"weir-client-{uuid.uuid4().hex[:8]}"
        """The Kafka client id of this client's producer and result listener."""
        self._producer: AIOKafkaProducer | None = None
        self._checked: set[str] = set()
        self._schema_ids: dict[str, int] = {}
        """The request schema's registry id per requests topic (with a schema registry)."""
        self._listener = ResultListener(settings, keep=keep_results, client_id=self.client_id)
        self._reader = ResultReader(settings, self._listener)
        self._submitted: OrderedDict[str, tuple[str, int]] = OrderedDict()
        """Recent request ids -> (pipeline, epoch ms at submission), for ``stream()``."""
        self._keep = keep_results

    @property
    def listener(self) -> ResultListener:
        return self._listener

    async def __aenter__(self) -> WeirClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is not None:
            return
        kafka = KafkaConnection.of(self.settings)
        producer = kafka.producer(
            client_id=self.client_id, acks="all", enable_idempotence=True, linger_ms=5
        )
        try:
            await producer.start()
        except BaseException as exc:
            await producer.stop()
            if isinstance(exc, KafkaConnectionError):
                raise await kafka.unavailable(exc) from exc
            raise
        try:
            await self._listener.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        await self._listener.stop()
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
            # Results can only follow requests: listening from now on misses none of them.
            await self._listener.watch(pipeline)
            self._checked.add(topic)
        return topic

    async def submit(
        self,
        pipeline: str,
        payload: Mapping[str, Any],
        *,
        request_id: str | None = None,
        options: Mapping[str, str] | None = None,
        fmt: Literal["json", "avro"] = "json",
        conversation_id: str | None = None,
    ) -> str:
        """Submit one request; return its request id once the broker has it.

        ``conversation_id`` puts the request in that conversation (the payload's
        ``conversation_id`` field; ``History`` steps see its earlier turns).
        """
        if conversation_id is not None:
            payload = {**payload, "conversation_id": conversation_id}
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
        ``request_ids``, when given, must hold one id per payload.  A payload with a
        ``conversation_id`` is keyed by it, so a conversation stays on one partition.
        """
        payloads = list(payloads)
        given = list(request_ids) if request_ids is not None else None
        if given is not None and len(given) != len(payloads):
            raise ConfigError(
                f"submit_many got {len(payloads)} payload(s) but {len(given)} request id(s);"
                " give one id per payload, or none"
            )
        # Checked before anything is sent: a bad id rejects the whole call.
        conversations = [conversation_id_of(p) for p in payloads]
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        topic = await self._requests_topic(pipeline)
        schema_id = await self._request_schema_id(topic) if fmt == "avro" else None
        ids: list[str] = []
        futures = []
        sent_at = now_ms()
        for n, payload in enumerate(payloads):
            rid = given[n] if given is not None else uuid.uuid4().hex
            request = Request(
                request_id=rid,
                pipeline=pipeline,
                payload=dict(payload),
                options=dict(options or {}),
            )
            raw = request.to_avro(schema_id=schema_id) if fmt == "avro" else request.to_json()
            key = conversations[n] or rid
            fut = await self._producer.send(topic, value=raw, key=key.encode())
            if on_sent is not None:
                fut.add_done_callback(lambda _: on_sent(1))
            futures.append(fut)
            ids.append(rid)
            self._submitted[rid] = (pipeline, sent_at)
            if len(self._submitted) > self._keep:
                self._submitted.popitem(last=False)
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
        key = conversation_id_of(payload) or request_id
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
        future: asyncio.Future[Any] = await self._producer.send(topic, value=raw, key=key.encode())
        return future

    async def watch(self, pipeline: str) -> None:
        """Listen for ``pipeline``'s results from now on.

        ``submit`` does this itself; call it to await results of requests that
        another process submits after this call.
        """
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        await self._listener.watch(pipeline)

    async def result(self, request_id: str, *, timeout: float = 60.0) -> Result:
        """The result of a request this client submitted (or of a watched pipeline).

        Raises ``ResultTimeoutError`` (a ``TimeoutError``) after ``timeout`` seconds.
        """
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        return await self._listener.result(request_id, timeout=timeout)

    async def map(
        self,
        pipeline: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        timeout: float = 300.0,
        progress: bool | Callable[[int, int], None] = False,
        options: Mapping[str, str] | None = None,
    ) -> list[Result]:
        """Submit every payload and return their results in the same order.

        ``progress=True`` draws a progress bar on the terminal (stderr);
        a callable is called as ``progress(done, total)`` instead.
        ``timeout`` bounds the whole call (``ResultTimeoutError`` names how many
        are missing).
        """
        payloads = list(payloads)
        ids = await self.submit_many(pipeline, payloads, options=options)
        total = len(ids)
        bar = _ProgressBar(pipeline, total) if progress is True else None
        report = progress if callable(progress) else (bar.update if bar else None)
        done = 0

        async def one(rid: str) -> Result:
            nonlocal done
            result = await self._listener.result(rid, timeout=timeout)
            done += 1
            if report is not None:
                report(done, total)
            return result

        try:
            async with asyncio.timeout(timeout):
                return list(await asyncio.gather(*(one(rid) for rid in ids)))
        except TimeoutError:
            raise ResultTimeoutError(
                f"{total - done} of {total} results of {pipeline!r} did not arrive within"
                f" {timeout:g}s; is a worker for it running ('weir worker')?"
            ) from None
        finally:
            if bar is not None:
                bar.close()

    async def send_raw(self, pipeline: str, value: bytes | None, key: bytes | None = None) -> None:
        """Put arbitrary bytes on the requests topic (for tools and tests of bad input)."""
        if self._producer is None:
            raise WeirError("WeirClient is not started")
        topic = await self._requests_topic(pipeline)
        await self._producer.send_and_wait(topic, value=value, key=key)

    def results(
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
        # The reader's generator itself, not one wrapping it: closing it stops its consumer.
        return self._reader.scan(
            pipeline,
            from_beginning=from_beginning,
            follow=follow,
            idle_timeout=idle_timeout,
            start=start,
        )

    def stream(
        self,
        request_id: str,
        *,
        pipeline: str | None = None,
        step: str | None = None,
        since_ms: int | None = None,
        idle_timeout: float = 60.0,
    ) -> TokenStream:
        """The token stream of one request, as streaming model calls publish it.

        ``async for chunk in client.stream(rid)`` yields ``delta`` chunks, a
        ``restart`` chunk whenever the answer broke off and starts again (drop
        the text so far), and ends with ``done``.  For a request this client
        submitted, ``pipeline`` and where to start reading are known; for
        another, give ``pipeline`` and open the stream (``async with``) before
        the request is submitted, or give ``since_ms``.  Each open stream reads
        with a consumer of its own (tokens are few streams, results are many).
        """
        known = self._submitted.get(request_id)
        if pipeline is None:
            if known is None:
                raise ConfigError(
                    f"request {request_id} was not submitted by this client: give its pipeline"
                    " (client.stream(request_id, pipeline=...))"
                )
            pipeline = known[0]
        if since_ms is None and known is not None:
            since_ms = known[1] - self.stream_lookback_ms
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

        For a pipeline this client submitted to (or watches), the result
        listener has every result since; otherwise the results topic is read
        from its beginning.  Raises ``ResultTimeoutError`` (a ``TimeoutError``)
        naming how many are missing.
        """
        return await self._reader.wait_for(pipeline, request_ids, timeout=timeout)


class _ProgressBar:
    """``map(progress=True)``: a rich progress bar on stderr."""

    def __init__(self, pipeline: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self._progress = Progress(console=Console(stderr=True), transient=False)
        self._task = self._progress.add_task(pipeline, total=total)
        self._progress.start()

    def update(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()
