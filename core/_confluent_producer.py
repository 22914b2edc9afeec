"""``ConfluentProducer``: the worker's data-path producer on librdkafka (``confluent-kafka``).

Optional (``pip install 'weir[confluent]'``); imported only when ``kafka_client`` is
``confluent``.  Same contract as ``weir.core._producers.DataProducer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import confluent_kafka
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from weir.core._producers import Batches, Outgoing
from weir.core.errors import BrokerError
from weir.core.secrets import scrub

__all__ = ["ConfluentProducer"]

log = logging.getLogger("weir.kafka")


class _Ack(NamedTuple):
    topic: str
    partition: int
    offset: int


_POLL_S = 0.05
"""How long the delivery thread blocks in ``poll``: a report wakes it at once."""
_METADATA_MAX_AGE_S = 30.0
_FULL_WAIT_S = 0.002
"""Pause before sending again into a full local queue (the broker is behind)."""
_TOO_LARGE = confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE
"""librdkafka's code for a message over ``message.max.bytes`` (refused by it or the broker)."""


class ConfluentProducer:
    """``DataProducer`` on librdkafka: its C threads batch and send; one Python thread here
    serves the delivery reports (``poll``) and hands each batch of them to the event loop
    with one ``call_soon_threadsafe``."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        token_provider: AbstractTokenProvider | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._config = config  # holds resolved secrets: never shown
        self._token_provider = token_provider
        self._timeout_s = timeout_s
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reports: list[tuple[asyncio.Future[Any], Any, Any]] = []
        self._pending = 0
        self._idle: asyncio.Event | None = None
        self._partitions: dict[str, list[int]] = {}
        self._wanted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._last_error = ""
        """What librdkafka last reported (authentication, TLS): the why of a failed start."""
        self._renewing: asyncio.Task[None] | None = None
        """Replacing a producer a fatal error left unusable (``_renew``)."""

    def __repr__(self) -> str:
        return f"ConfluentProducer({self._config.get('bootstrap.servers')!r})"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()  # started again after a stop
        self._idle = asyncio.Event()
        self._idle.set()
        config = dict(self._config)
        config["error_cb"] = self._on_error
        config["logger"] = log
        if self._token_provider is not None:
            config["oauth_cb"] = self._oauth_token
        try:
            # Off the loop: with OAUTHBEARER the constructor waits for a first token, which
            # ``_oauth_token`` gets from the provider on the loop.
            self._producer = await asyncio.to_thread(confluent_kafka.Producer, config)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot configure the confluent-kafka producer: {exc}") from None
        self._thread = threading.Thread(target=self._serve, name="weir-rdkafka", daemon=True)
        self._thread.start()
        try:
            # librdkafka connects lazily; aiokafka's start fails when no broker answers, so
            # this does too (the same error, not a first send that never acknowledges).
            await asyncio.to_thread(self._producer.list_topics, timeout=self._timeout_s)
        except confluent_kafka.KafkaException as exc:
            await self._halt()
            bootstrap = self._config.get("bootstrap.servers")
            why = self._last_error or scrub(str(exc.args[0]))
            raise BrokerError(f"cannot connect to Kafka at {bootstrap}: {why}") from None

    async def stop(self) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        if self._producer is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.flush()
        except TimeoutError:
            log.warning("%d message(s) unacknowledged when the producer stopped", self._pending)
        await self._halt()

    async def _halt(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        # What librdkafka still holds fails now (a purge reports each message), so no
        # caller waits for an acknowledgement that cannot come.
        self._producer.purge()
        # ``flush``, not one ``poll(0)``: the reports of purged in-flight messages come a
        # little later, and a report never served would leave its sender waiting for good.
        left = await asyncio.to_thread(self._producer.flush, self._timeout_s)
        if left:
            log.error("%d message(s) neither acknowledged nor failed by librdkafka", left)
        reports, self._reports = self._reports, []
        self._settle(reports)
        self._producer = None

    async def send(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        producer = self._producer
        if producer is None:
            raise KafkaError("the producer is not started")
        assert self._loop is not None and self._idle is not None
        future = self._loop.create_future()

        def delivered(err: Any, msg: Any) -> None:  # in the delivery thread
            # ``self._reports`` when the report comes: the thread swaps the list per poll.
            self._reports.append((future, err, msg))

        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    on_delivery=delivered,
                    headers=headers,
                )
                break
            except BufferError:
                await asyncio.sleep(_FULL_WAIT_S)
            except confluent_kafka.KafkaException as exc:  # refused at once
                raise _error(exc.args[0] if exc.args else exc) from None
        self._pending += 1
        self._idle.clear()
        return future

    async def send_batches(self, messages: Sequence[Outgoing]) -> Batches:
        """One future per message: librdkafka batches in C, its reports come per message."""
        batches: Batches = []
        for i, m in enumerate(messages):
            try:
                future = await self.send(
                    m.topic, value=m.value, key=m.key, headers=m.headers, partition=m.partition
                )
            except MessageSizeTooLargeError as exc:
                future = asyncio.get_running_loop().create_future()
                future.set_exception(exc)
            batches.append((future, [i]))
        return batches

    async def flush(self) -> None:
        if self._idle is not None:
            await self._idle.wait()

    def partitions_for(self, topic: str) -> list[int] | None:
        partitions = self._partitions.get(topic)
        if partitions is None:
            self._wanted.put(topic)
        return partitions

    # -- the delivery thread ------------------------------------------------------------

    def _serve(self) -> None:
        producer, loop = self._producer, self._loop
        assert loop is not None
        refreshed = time.monotonic()
        while not self._stopping.is_set():
            producer.poll(_POLL_S)
            if self._reports:
                # A new list before handing the full one over: the loop reads it, this
                # thread appends only to its successor.
                reports, self._reports = self._reports, []
                try:
                    loop.call_soon_threadsafe(self._settle, reports)
                except RuntimeError:  # the loop closed under a producer never stopped
                    return
            topics = set()
            while not self._wanted.empty():
                topics.add(self._wanted.get_nowait())
            if time.monotonic() - refreshed > _METADATA_MAX_AGE_S:
                topics |= self._partitions.keys()
                refreshed = time.monotonic()
            for topic in topics:
                self._look_up(topic)
        # The reports of the last poll are settled by ``_halt`` on the loop.

    def _look_up(self, topic: str) -> None:
        try:
            metadata = self._producer.list_topics(topic, timeout=5.0)
        except confluent_kafka.KafkaException as exc:  # the next call asks again
            log.debug("no metadata for %s yet: %s", topic, exc)
            return
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            self._partitions[topic] = sorted(found.partitions)

    def _on_error(self, err: Any) -> None:  # in the delivery thread (or a starting one)
        self._last_error = scrub(err.str() if hasattr(err, "str") else str(err))
        if not (hasattr(err, "fatal") and err.fatal()):
            log.warning("kafka (librdkafka): %s", self._last_error)
            return
        # The idempotent producer can go no further (a sequence the broker refused, say):
        # every later send would fail.  A new one (a new producer id) takes over.
        log.error("kafka (librdkafka), fatal: %s; replacing the producer", self._last_error)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._fatal)

    def _fatal(self) -> None:
        if self._renewing is None and self._producer is not None:
            self._renewing = asyncio.get_running_loop().create_task(
                self._renew(), name="weir-rdkafka-renew"
            )

    async def _renew(self) -> None:
        """Replace the producer a fatal error left unusable.

        What it still held fails (a purge reports each message), so the outbox sends it
        again on the new one: a message that did land is then written twice, which every
        consumer downstream tolerates.  Sends before the new one is up fail the same way.
        """
        await self._halt()
        backoff = 0.5
        while True:
            try:
                await self.start()
            except BrokerError as exc:
                log.warning("no new producer yet (%s); trying again in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
                continue
            self._renewing = None
            log.info("a new librdkafka producer took over after a fatal error")
            return

    def _oauth_token(self, _config: str) -> tuple[str, float]:
        """librdkafka's ``oauth_cb``: a token from the provider, run on the event loop."""
        assert self._loop is not None and self._token_provider is not None
        future = asyncio.run_coroutine_threadsafe(self._token_provider.token(), self._loop)
        token: str = future.result(timeout=self._timeout_s)
        # The provider refreshes before its token expires; librdkafka asks again at 80%
        # of this lifetime, so every ~48 s it gets what the provider holds then.
        return token, time.time() + 60.0

    # -- on the loop ---------------------------------------------------------------------

    def _settle(self, reports: list[tuple[asyncio.Future[Any], Any, Any]]) -> None:
        for future, err, msg in reports:
            self._pending -= 1
            if future.done():
                continue
            if err is None:
                future.set_result(_Ack(msg.topic(), msg.partition(), msg.offset()))
            else:
                future.set_exception(_error(err))
        if self._pending <= 0 and self._idle is not None:
            self._idle.set()


def _error(err: Any) -> KafkaError:
    """aiokafka's error for librdkafka's ``err`` (a ``confluent_kafka.KafkaError``)."""
    text = scrub(str(err.str() if hasattr(err, "str") else err))
    code = err.code() if hasattr(err, "code") else None
    if code == _TOO_LARGE:
        return MessageSizeTooLargeError(text)
    return KafkaError(text)
