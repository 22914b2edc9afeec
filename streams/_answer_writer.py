"""The answers' transactions: one transactional producer per answers partition.

Each result and its "answered" marker go out in one transaction (``weir.streams.answer``
explains why); the writer batches the answers that arrive while one commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from weir.core._producers import MAX_REQUEST_BYTES
from weir.core.kafka import KafkaConnection, send_batches
from weir.streams._runtime import Runtime
from weir.streams.outbox import Abandoned, OutMessage
from weir.streams.table import ChangelogTable
from weir.topics._aiokafka import (
    add_to_transaction,
    left_transaction,
    read_until,
    retrying,
    started_consumer,
    stop_consumer,
)

__all__ = ["AnswerWriter"]

log = logging.getLogger("weir.answer")

TRANSACTION_TIMEOUT_MS = 60_000
"""The coordinator aborts (and fences) a transaction left open this long."""
AHEAD_IDLE_S = 20.0
"""A transaction opened ahead and unused this long is aborted, well before that timeout."""


@dataclass
class _Pending:
    request_id: str
    messages: list[OutMessage]
    done: asyncio.Future[None]


class AnswerWriter:
    """A transactional producer for one answers partition; batches concurrent answers.

    After a failed transaction it cannot know whether the broker committed it
    (a commit whose response was lost still commits), so before writing the
    batch again it reconnects — which settles that transaction — and reads the
    answered changelog written since the last commit it saw: answers found
    there are done, not written twice.  Fenced by a new owner, it gives the
    batch back unless its consumer still owns the partition.

    Idle after a commit, it opens the next transaction ahead with its two partitions
    registered (``answer_open_ahead_ms``), so an answer that comes then only produces and
    commits; one left unused is aborted after ``AHEAD_IDLE_S``.
    """

    def __init__(
        self,
        runtime: Runtime,
        partition: int,
        answered: ChangelogTable[Any],
        owned: Callable[[], bool],
    ) -> None:
        self._rt = runtime
        self.partition = partition
        self._answered = answered
        self._owned = owned
        self._tid = runtime.topics.answers_transactional_id(partition)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._tombstones: list[OutMessage] = []
        self._closing = False
        self._ahead = False
        """A transaction is open, its partitions registered, and nothing sent in it yet."""
        self.known_until = 0
        """Changelog offset up to which every committed marker is in ``answered``."""

    async def start(self) -> None:
        await retrying(self._connect, what=f"registering {self._tid}")
        self._task = asyncio.create_task(self._loop(), name=f"weir-answers-{self.partition}")

    async def _connect(self) -> None:
        producer = KafkaConnection.of(self._rt.settings).producer(
            client_id=f"weir-{self._rt.settings.worker_id}-answers-{self.partition}",
            transactional_id=self._tid,
            enable_idempotence=True,
            acks="all",
            # Its batches are made whole (``send_batches``): lingering would only delay them.
            linger_ms=0,
            # A transaction's answers in one batch per partition: aiokafka keeps one request
            # in flight per broker, so at its 16 KB default a burst's transaction of ~400
            # answers went out as a dozen produce round trips in a row.
            max_batch_size=self._rt.settings.producer_batch_bytes,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=15000,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        )
        # Starting registers the transactional id: an earlier holder is fenced, and the
        # transaction it left open is completed or aborted before this returns.
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer

    async def _disconnect(self) -> None:
        self._ahead = False
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.done.done():
                pending.done.set_exception(Abandoned("answer writer stopped"))
        if self._ahead:
            # Left clean for whoever takes this partition over (registering the id would
            # otherwise have the coordinator abort it first).
            await self._abort_ahead(timeout=2.0)
        await self._disconnect()

    def forget(self, request_ids: list[str], table: ChangelogTable[Any]) -> None:
        """Drop expired answered ids; their tombstones go out with the next transaction."""
        for rid in request_ids:
            table.pop(self.partition, rid)
            self._tombstones.append(
                OutMessage(
                    self._rt.topics.answered_changelog, rid.encode(), None, None, self.partition
                )
            )

    async def write(self, request_id: str, messages: list[OutMessage]) -> None:
        """Write ``messages`` in a committed transaction (batched with concurrent writes)."""
        if self._closing:
            raise Abandoned("answer writer stopped")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request_id, messages, done))
        await done

    async def _loop(self) -> None:
        while True:
            batch = [await self._next()]
            # One turn of the loop for the answers of the same batch to join this
            # transaction; under load, the answers that come while it commits make the next.
            # (A fixed 2 ms wait here was a third of the last hop's unloaded latency.)
            await asyncio.sleep(0)
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: never leave callers waiting
                log.exception("answers writer of partition %d failed", self.partition)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)

    async def _next(self) -> _Pending:
        """The next answer; while none comes, open the next transaction ahead (and abort
        it if none comes for long)."""
        delay = self._rt.settings.answer_open_ahead_ms
        if not delay or self._producer is None:
            return await self._queue.get()
        if not self._ahead:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay / 1000):
                    return await self._queue.get()
            await self._open_ahead()
            if not self._ahead:
                return await self._queue.get()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(AHEAD_IDLE_S):
                return await self._queue.get()
        await self._abort_ahead(timeout=30.0)
        return await self._queue.get()

    async def _open_ahead(self) -> None:
        producer = self._producer
        assert producer is not None
        topics = self._rt.topics
        try:
            await producer.begin_transaction()
            add_to_transaction(
                producer,
                [
                    TopicPartition(topics.results, self.partition),
                    TopicPartition(topics.answered_changelog, self.partition),
                ],
            )
        except Exception as exc:  # the producer is broken: the next answer reconnects
            log.info("could not open answers transaction %s ahead: %s", self._tid, exc)
        else:
            self._ahead = True
            return
        await self._disconnect()  # outside the ``except``: see ``_commit``

    async def _abort_ahead(self, *, timeout: float) -> None:
        producer = self._producer
        self._ahead = False
        if producer is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await producer.abort_transaction()
        except Exception as exc:
            log.info("could not abort answers transaction %s opened ahead: %s", self._tid, exc)
        else:
            return
        await self._disconnect()  # outside the ``except``: see ``_commit``

    async def _commit(self, batch: list[_Pending]) -> None:
        backoff = 0.2
        uncertain = False
        while True:
            # Handled after the ``try``, not inside its ``except``: compiled, a loop that awaited
            # inside the ``except`` and went round again raised the handled exception anew at
            # a later await (the same instance, with no request sent), so a fenced writer that
            # still owned its partition never answered again (test_answer.py, the fence test).
            failure: Exception | None = None
            try:
                if self._producer is None:
                    await self._connect()
                if uncertain:
                    batch = await self._settle(batch)
                    uncertain = False
                    if not batch:
                        return
                await self._transaction(batch)
            except Exception as exc:
                failure = exc
            if failure is None:
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_result(None)
                return
            await self._disconnect()
            uncertain = True
            if isinstance(failure, (ProducerFenced, InvalidProducerEpoch)):
                # Expelled while busy (a long drain, a blocked loop): another worker may
                # own this partition now.  Ask the group, after a heartbeat, before taking
                # the transactional id back.
                log.warning(
                    "answers writer of partition %d fenced (%s); checking it still owns it",
                    self.partition,
                    type(failure).__name__,
                )
                await asyncio.sleep(3.0)
                if self._closing or not self._owned():
                    self._fail(batch, Abandoned(f"answers partition {self.partition}: {failure}"))
                    return
                continue
            log.warning(
                "answers transaction on partition %d failed (%s: %s); retrying in %.1fs",
                self.partition,
                type(failure).__name__,
                failure,
                backoff,
            )
            if self._closing:
                self._fail(batch, Abandoned("answer writer stopped"))
                return
            await asyncio.sleep(backoff)
            backoff = min(5.0, backoff * 2)

    async def _transaction(self, batch: list[_Pending]) -> None:
        producer = self._producer
        assert producer is not None
        tombstones, self._tombstones = self._tombstones, []
        try:
            async with asyncio.timeout(30):
                if self._ahead:
                    self._ahead = False
                    self._rt.stats.answers_ahead += 1
                    # Fenced or failed while it waited: the usual handling below.
                    error = left_transaction(producer)
                    if error is not None:
                        raise error
                else:
                    await producer.begin_transaction()
                # Every message names its partition (this writer's).
                messages = [m for pending in batch for m in pending.messages] + tombstones
                batches = await send_batches(producer, messages)
                firsts = await asyncio.gather(*(ack for ack, _ in batches))
                await producer.commit_transaction()
        except BaseException:
            self._tombstones = tombstones + self._tombstones
            raise
        changelog = self._rt.topics.answered_changelog
        ends = [
            first.offset + len(members)
            for first, (_, members) in zip(firsts, batches, strict=True)
            if first.topic == changelog
        ]
        if ends:
            self.known_until = max(self.known_until, *ends)

    async def _settle(self, batch: list[_Pending]) -> list[_Pending]:
        """Drop from ``batch`` the answers a transaction whose outcome we missed committed."""
        tp = TopicPartition(self._rt.topics.answered_changelog, self.partition)
        consumer = await started_consumer(
            KafkaConnection.of(self._rt.settings),
            what="reading the answered changelog",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        committed: set[str] = set()
        try:
            consumer.assign([tp])
            end = (await retrying(lambda: consumer.end_offsets([tp]), what="changelog end"))[tp]
            consumer.seek(tp, self.known_until)
            async for record in read_until(consumer, tp, end):
                if record.key is not None and record.value:
                    committed.add(record.key.decode())
            self.known_until = end
        finally:
            await stop_consumer(consumer)
        left = []
        for pending in batch:
            if pending.request_id in committed:
                log.info(
                    "answer to %s was committed after all; not written twice", pending.request_id
                )
                if not pending.done.done():
                    pending.done.set_result(None)
            else:
                left.append(pending)
        return left

    def _fail(self, batch: list[_Pending], error: BaseException) -> None:
        for pending in batch:
            if not pending.done.done():
                pending.done.set_exception(error)
