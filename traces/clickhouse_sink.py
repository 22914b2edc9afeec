"""The ClickHouse sink: the trace topic into ``pipeline_events``, each event once.

A consumer group on ``weir.traces`` (``sink_group``) buffers events and inserts
them as one block when ``sink_batch_size`` events are buffered or the oldest has
waited ``sink_flush_interval_s``; ClickHouse decodes them (an Avro block of the
events as they arrived: ``weir.traces._event_block``), Python reads only what it
refuses and older schemas' events.  Offsets are committed only after the insert
succeeded.

While the store is unavailable the sink stops fetching (its partitions are
paused, the consumer stays in its group), keeps the batch it could not insert,
and retries it with back-off up to ``sink_max_backoff_s``; it holds at most one
batch in memory, so it consumes only what it can insert.

Nothing is stored twice:

* a retried insert carries the same ``insert_deduplication_token`` (derived
  from the batch's trace-topic offset ranges), so a block that did land before
  its answer was lost is dropped by ClickHouse (table and aggregates alike);
* every row records its trace-topic partition and offset, and a partition
  assigned to the sink starts after the highest offset already stored when
  that is ahead of the committed offset: a crash between insert and commit
  does not insert the same events again;
* event ids seen recently are remembered, so a worker's resend of an event
  that did arrive (the outbox retries on broker errors) is dropped.

Every insert writes rows of one day (one table partition), so a block is
stored whole or not at all and the stored offsets of each topic partition
stay a prefix of the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import TraceStoreError
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import TRACE_EVENT_SCHEMA
from weir.streams._bounded import RecentSet
from weir.topics.admin import TopicAdmin
from weir.topics.names import global_topic_specs
from weir.traces._row_decoder import RowDecoder
from weir.traces._sink_batch import SinkBatch, SinkStats, batch_token
from weir.traces._sink_insert import Inserted, insert_batch
from weir.traces._sink_placement import start_offsets
from weir.traces._sink_store import StoreFactory, StoreLink
from weir.traces.store import TraceStore

__all__ = ["ClickHouseSink", "SinkStats"]

log = logging.getLogger("weir.sink")


class ClickHouseSink:
    """Consumes the trace topic (``settings.trace_topic``) into the trace store until stopped.

    >>> sink = ClickHouseSink(settings)     # doctest: +SKIP
    >>> async with sink:                    # doctest: +SKIP
    ...     await sink.wait_stopped()
    """

    def __init__(
        self,
        settings: WeirSettings,
        *,
        store: StoreFactory | None = None,
        topic: str | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.trace_topic
        self.stats = SinkStats()
        self._link = StoreLink(
            store or (lambda: TraceStore.connect(settings)),
            stats=self.stats,
            max_backoff_s=settings.sink_max_backoff_s,
            held=lambda: len(self._pending),
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._pending = SinkBatch()
        self._recent: RecentSet[str] = RecentSet(settings.sink_seen_max)
        """Event ids remembered to drop resent duplicates (a few minutes of heavy traffic);
        the oldest are forgotten first (``SinkStats.ids_forgotten``)."""
        self._decoder = RowDecoder(TRACE_EVENT_SCHEMA.header)
        """Events into rows when the store refuses a block of them (used by one insert at
        a time, in its thread)."""
        self._assigned: set[TopicPartition] = set()
        self._unplaced: set[TopicPartition] = set()
        """Assigned partitions whose start offset still needs the store's progress."""
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inserting: asyncio.Task[Inserted] | None = None
        """The insert of ``_sealed`` (at most one), while the next batch is fetched."""
        self._sealed: SinkBatch | None = None
        self._per_record = 1.0
        """Events per trace record lately (workers pack a batch's events in one)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> ClickHouseSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Create the trace topic if missing, join the sink's group, start consuming."""
        if self._task is not None:
            return
        async with TopicAdmin(self.settings) as admin:
            await admin.ensure(global_topic_specs(self.settings))
        with contextlib.suppress(TraceStoreError):  # a store still down is waited for
            await self._link.ensure()
        self._consumer = KafkaConnection.of(self.settings).consumer(
            group_id=self.settings.sink_group,
            client_id=f"weir-sink-{self.settings.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset=self.settings.sink_start,
            isolation_level="read_committed",
            max_poll_records=min(self.settings.sink_batch_size, 10_000),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._task = asyncio.create_task(self._loop(), name="weir-sink")
        log.info(
            "sink %s consuming %s into %s (database %s)",
            self.settings.sink_group,
            self.topic,
            self.settings.trace_store_dsn,
            self.settings.clickhouse_database,
        )

    def request_stop(self) -> None:
        """Ask the sink to stop (safe from a signal handler)."""
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(self) -> None:
        """Start, consume until ``request_stop()``, then stop."""
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    async def stop(self, *, flush_timeout_s: float = 10.0) -> None:
        """Insert and commit what is buffered (if the store answers in time), then leave.

        A batch that cannot be inserted in time stays uncommitted: the group
        reads it again after a restart.
        """
        if self._stopped.is_set() or self._task is None:
            return
        self._stopping.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._pending or self._sealed:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self._settle()
                    await self._flush(retry=True)
            except TimeoutError:
                log.warning(
                    "trace store unavailable; %d buffered events stay uncommitted",
                    len(self._pending),
                )
        if self._consumer is not None:
            await self._consumer.stop()
        self._link.close()
        self._stopped.set()
        log.info("sink stopped: %s", self.stats)

    @property
    def assigned(self) -> set[TopicPartition]:
        return set(self._assigned)

    @property
    def ready(self) -> bool:
        """Partitions assigned and each placed at its start offset (consuming)."""
        return bool(self._assigned) and not self._unplaced

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        interval = self.settings.sink_flush_interval_s
        size = self.settings.sink_batch_size
        while not self._stopping.is_set():
            if self._unplaced and not await self._place():
                await self._wait_backoff()
                continue
            if self._inserting is not None and self._inserting.done():
                await self._settle()
            pending = self._pending
            due = pending and time.monotonic() - pending.since >= interval
            if len(pending) >= size or due:
                await self._seal()
                continue
            wait = (
                interval if not pending else max(0.0, interval - (time.monotonic() - pending.since))
            )
            try:
                # A batch holds about ``size`` events, whatever their records hold.
                room = max(1, int((size - len(pending)) / self._per_record))
                batches = await consumer.getmany(
                    timeout_ms=int(min(wait, 0.5) * 1000) or 1, max_records=room
                )
            except KafkaError as exc:
                log.warning("fetching trace events failed (will retry): %s", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                if tp not in self._assigned or tp in self._unplaced:
                    continue
                for record in records:
                    self._take(tp, record.offset, record.value, record.headers)

    def _take(
        self,
        tp: TopicPartition,
        offset: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Buffer the events of one record: one event, or a worker's batch of them."""
        events = self._pending.take(
            tp, offset, value, headers, stats=self.stats, recent=self._recent
        )
        self._per_record = 0.9 * self._per_record + 0.1 * events

    async def _seal(self) -> None:
        """Start inserting the pending batch; the next one is fetched and decoded meanwhile.

        One insert at a time: the previous one is settled first, so at most two
        batches are held.
        """
        await self._settle()
        if not self._pending:
            return
        batch, self._pending = self._pending, SinkBatch()
        self._sealed = batch
        self._inserting = asyncio.create_task(self._insert(batch), name="weir-sink-insert")

    async def _insert(self, batch: SinkBatch) -> Inserted:
        store = await self._link.ensure()
        token = batch_token(self.topic, batch)
        try:
            return await asyncio.to_thread(
                insert_batch, store, batch, token=token, decoder=self._decoder
            )
        except TraceStoreError as exc:
            self._link.unavailable(exc)
            raise

    async def _settle(self, *, retry: bool = True) -> None:
        """Wait for the insert in flight and commit it.

        When it failed, what was fetched since is given back (read again later, in
        order) and the batch is inserted the way ``_flush`` does, with its retries.
        """
        task, batch = self._inserting, self._sealed
        if task is None or batch is None:
            return
        try:
            # Shielded: a stop that cancels the loop settles the same insert afterwards.
            inserted = await asyncio.shield(task)
        except TraceStoreError:
            self._inserting = self._sealed = None
            later, self._pending = self._pending, batch
            self._rewind(later)
            await self._flush(retry=retry)
            return
        self._inserting = self._sealed = None
        await self._inserted(batch, inserted)

    def _rewind(self, batch: SinkBatch) -> None:
        """Forget ``batch`` unread: its partitions are read again from its first offsets."""
        consumer = self._consumer
        assert consumer is not None
        for event_id in batch.ids:
            self._recent.discard(event_id)
        for tp, first in batch.first.items():
            if tp in self._assigned:
                consumer.seek(tp, first)

    async def _inserted(self, batch: SinkBatch, inserted: Inserted) -> None:
        """Count and commit a batch the store holds now."""
        consumer = self._consumer
        assert consumer is not None
        self._link.available()
        self.stats.inserted += inserted.events
        self.stats.undecodable += inserted.undecodable
        self.stats.batches += 1
        offsets = {tp: last + 1 for tp, last in batch.last.items() if tp in self._assigned}
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Stored already: after a restart the store's progress skips these.
                log.warning("committing trace offsets failed (store has them): %s", exc)

    async def _flush(self, *, retry: bool) -> None:
        """Insert the pending batch (retrying while the store is down), then commit it."""
        pending = self._pending
        if not pending:
            return
        token = batch_token(self.topic, pending)
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                store = await self._link.ensure()
                inserted = await asyncio.to_thread(
                    insert_batch, store, pending, token=token, decoder=self._decoder
                )
            except TraceStoreError as exc:
                self._link.unavailable(exc)
                if not retry:
                    raise
                # Fetch nothing meanwhile; keep polling so the group keeps us.
                consumer.pause(*self._assigned)
                await self._wait_backoff()
                if not self._pending:  # revoked while waiting: the new owner takes over
                    return
                if self._pending is not pending:
                    pending = self._pending
                    token = batch_token(self.topic, pending)
                continue
            break
        self._pending = SinkBatch()
        await self._inserted(pending, inserted)
        consumer.resume(*(self._assigned - self._unplaced))

    def _drop_pending(self) -> None:
        """Forget the buffered batch (uncommitted: it is read again, so its ids are no dupes)."""
        for event_id in self._pending.ids:
            self._recent.discard(event_id)
        self._pending = SinkBatch()

    async def _wait_backoff(self) -> None:
        """Sleep for the current back-off while still polling (partitions paused)."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + self._link.backoff
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError):
                got = await consumer.getmany(timeout_ms=200)
                for tp, records in got.items():  # a partition resumed by a rebalance
                    if records:
                        consumer.seek(tp, records[0].offset)
                        consumer.pause(tp)

    @property
    def store(self) -> TraceStore | None:
        """The trace store while it is open."""
        return self._link.store

    # -- where assigned partitions start ---------------------------------------------------

    async def _place(self) -> bool:
        """Seek unplaced partitions past what the store already holds; ``False``: store down."""
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(self._unplaced, key=lambda tp: tp.partition)
        try:
            store = await self._link.ensure()
            stored = await asyncio.to_thread(store.progress, [tp.partition for tp in tps])
        except TraceStoreError as exc:
            self._link.unavailable(exc)
            return False
        starts, skipped = await start_offsets(
            consumer, tps, stored, sink_start=self.settings.sink_start
        )
        self.stats.skipped += skipped
        for tp, start in starts.items():
            consumer.seek(tp, start)
            self._unplaced.discard(tp)
            consumer.resume(tp)
        log.info("sink placed %d partition(s); %d assigned", len(tps), len(self._assigned))
        return True

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._settle(retry=False)
            if self._pending and revoked & set(self._pending.last):
                await self._flush(retry=False)
        except TraceStoreError:
            # Not inserted, not committed: the new owner reads these again.
            self._drop_pending()
        self._assigned -= revoked
        self._unplaced -= revoked

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        consumer.pause(*assigned)
        self._assigned |= assigned
        self._unplaced |= assigned
        log.info("sink assigned %d partition(s) of %s", len(assigned), self.topic)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: ClickHouseSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sink._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sink._on_assigned(set(assigned))
