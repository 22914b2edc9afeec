"""The worker's review desk: delivers decided reviews and expires those past their deadline.

Workers of a pipeline share its review topic's partitions through a consumer
group of their own (``weir.<pipeline>.reviews``).  A desk reads each
partition it is given from the beginning (reviews are few; no offsets are
committed), folds the records into its reviews in topic order, and

* for each review a closing record decides, sends the decided answer to the
  answers topic (``review.review_answer``), unless it was decided longer than
  ``answer_dedup_window_s`` ago (then it was delivered already: the answer
  stage would no longer recognise a second copy);
* every ``review_check_interval_s``, appends ``expired`` for each open review
  past its deadline; the fallback then goes out when that record is read back,
  if no answer came first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import WeirError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import now_ms
from weir.streams.review import Review, ReviewBook, closing_record, review_answer
from weir.topics._aiokafka import rewind, stop_consumer
from weir.topics.names import PipelineTopics

__all__ = ["ReviewDesk"]

log = logging.getLogger("weir.review")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, desk: ReviewDesk) -> None:
        self._desk = desk

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._desk.books.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._desk.books[tp.partition] = ReviewBook()
        if assigned and self._desk.consumer is not None:
            await rewind(self._desk.consumer, list(assigned))


class ReviewDesk:
    """One per worker; ``start()`` after the pipeline's topics exist, ``stop()`` before leaving."""

    def __init__(self, settings: WeirSettings, pipeline: str) -> None:
        self._settings = settings
        self._topics = PipelineTopics(pipeline)
        self.books: dict[int, ReviewBook] = {}
        """Reviews by partition, for the partitions this desk holds."""
        self.consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._expiring: set[str] = set()
        """Request ids whose ``expired`` record was sent and not read back yet."""
        self._undelivered: dict[str, Review] = {}
        self.delivered = 0
        self.expired = 0

    async def start(self) -> None:
        if self._task is not None:
            return
        producer = KafkaConnection.of(self._settings).producer(acks="all", enable_idempotence=True)
        await producer.start()
        consumer = KafkaConnection.of(self._settings).consumer(
            group_id=f"{self._topics.consumer_group}.reviews",
            client_id=f"weir-{self._settings.worker_id}-reviews",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
        except BaseException:
            await producer.stop()
            raise
        consumer.subscribe([self._topics.reviews], listener=_Rebalance(self))
        self._producer, self.consumer = producer, consumer
        self._task = asyncio.create_task(self._run(), name="weir-review-desk")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await stop_consumer(self.consumer)
            self.consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        interval_ms = int(self._settings.review_check_interval_s * 1000)
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=interval_ms)
                for tp, records in batch.items():
                    book = self.books.get(tp.partition)
                    if book is None:
                        continue  # revoked meanwhile
                    for record in records:
                        review = book.apply(record.value)
                        if review is not None and review.status != "open":
                            self._expiring.discard(review.request_id)
                            self._undelivered[review.request_id] = review
                await self._deliver()
                await self._expire()
            except KafkaError as exc:
                log.warning("the review desk could not reach Kafka (%s); trying again", exc)
                await asyncio.sleep(self._settings.review_check_interval_s)

    async def _deliver(self) -> None:
        producer = self._producer
        assert producer is not None
        oldest = now_ms() - int(self._settings.answer_dedup_window_s * 1000)
        for rid, review in list(self._undelivered.items()):
            if review.closed_at is not None and review.closed_at >= oldest:
                try:
                    answer = review_answer(review)
                except (WeirError, ValueError) as exc:
                    # A damaged escalation record: say so, and keep serving the others.
                    log.error("cannot deliver the review of request %s: %s", rid, exc)
                    del self._undelivered[rid]
                    continue
                await producer.send_and_wait(self._topics.answers, answer, key=rid.encode())
                self.delivered += 1
                log.info("review of request %s %s; its answer is delivered", rid, review.status)
            del self._undelivered[rid]

    async def _expire(self) -> None:
        producer = self._producer
        assert producer is not None
        now = now_ms()
        for book in list(self.books.values()):
            for review in book.open():
                rid = review.request_id
                if review.deadline_at > now or rid in self._expiring:
                    continue
                record = closing_record(
                    "expired", rid, by="deadline", at=now, token=uuid.uuid4().hex
                )
                await producer.send_and_wait(self._topics.reviews, record, key=rid.encode())
                self._expiring.add(rid)
                self.expired += 1
