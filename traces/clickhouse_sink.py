"""The ClickHouse sink: the trace topic into ``pipeline_events``, each event once.

A consumer group on ``weir.traces`` (``sink_group``) buffers decoded events and
inserts them as one block when ``sink_batch_size`` events are buffered or the
oldest has waited ``sink_flush_interval_s``.  Offsets are committed only after
the insert succeeded.

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
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from weir.core.config import WeirSettings
from weir.core.errors import TraceStoreError
from weir.schemas.messages import TraceEvent
from weir.streams._bounded import RecentSet
from weir.topics._aiokafka import retrying
from weir.topics.admin import TopicAdmin
from weir.topics.names import global_topic_specs
from weir.traces.rows import event_row
from weir.traces.store import TraceStore

__all__ = ["ClickHouseSink", "SinkStats"]

log = logging.getLogger("weir.sink")


@dataclasses.dataclass
class SinkStats:
    """Counters of a running sink."""

    consumed: int = 0
    inserted: int = 0
    batches: int = 0
    undecodable: int = 0
    duplicates: int = 0
    """Resent events dropped by event id."""
    skipped: int = 0
    """Events not read again because the store already held them (after a crash)."""
    ids_forgotten: int = 0
    """Event ids dropped from the dedup memory (``sink_seen_max``); a resend of one would
    be stored again, but resends come within seconds, far inside that many events."""
    store_failures: int = 0
    available: bool = False
    """Whether the last store operation succeeded."""


@dataclasses.dataclass
class _Pending:
    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    first: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    last: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    since: float = 0.0
    """``time.monotonic()`` of the first buffered record."""

    def __len__(self) -> int:
        return len(self.rows)


StoreFactory = Callable[[], TraceStore]


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
        self._open_store = store or (lambda: TraceStore.connect(settings))
        self.store: TraceStore | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._pending = _Pending()
        self._recent: RecentSet[str] = RecentSet(settings.sink_seen_max)
        """Event ids remembered to drop resent duplicates (a few minutes of heavy traffic);
        the oldest are forgotten first (``SinkStats.ids_forgotten``)."""
        self._assigned: set[TopicPartition] = set()
        self._unplaced: set[TopicPartition] = set()
        """Assigned partitions whose start offset still needs the store's progress."""
        self._backoff = 0.0
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
            await self._ensure_store()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
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
        if self._pending:
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self._flush(retry=True)
            except TimeoutError:
                log.warning(
                    "trace store unavailable; %d buffered events stay uncommitted",
                    len(self._pending),
                )
        if self._consumer is not None:
            await self._consumer.stop()
        if self.store is not None:
            self.store.close()
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
            pending = self._pending
            due = pending and time.monotonic() - pending.since >= interval
            if len(pending) >= size or due:
                await self._flush(retry=True)
                continue
            wait = (
                interval if not pending else max(0.0, interval - (time.monotonic() - pending.since))
            )
            try:
                batches = await consumer.getmany(
                    timeout_ms=int(min(wait, 0.5) * 1000) or 1, max_records=size - len(pending)
                )
            except KafkaError as exc:
                log.warning("fetching trace events failed (will retry): %s", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                if tp not in self._assigned or tp in self._unplaced:
                    continue
                for record in records:
                    self._take(tp, record.offset, record.value)

    def _take(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        pending = self._pending
        if not pending:
            pending.since = time.monotonic()
        pending.first.setdefault(tp, offset)
        pending.last[tp] = offset
        self.stats.consumed += 1
        try:
            if not value:
                raise ValueError("empty message")
            event = TraceEvent.decode(value)
            row = event_row(event, tp.partition, offset)
        except Exception as exc:  # any malformed event: count it, never stop the sink
            self.stats.undecodable += 1
            log.warning("skipping undecodable trace event %s@%d: %s", tp, offset, exc)
            return
        event_id = event["event_id"]
        if not self._recent.add(event_id):
            self.stats.duplicates += 1
            return
        self.stats.ids_forgotten = self._recent.evicted
        pending.rows.append(row)

    async def _flush(self, *, retry: bool) -> None:
        """Insert the pending batch (retrying while the store is down), then commit it."""
        pending = self._pending
        if not pending:
            return
        token = _token(self.topic, pending)
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                store = await self._ensure_store()
                for part, rows in enumerate(_by_day(pending.rows)):
                    await asyncio.to_thread(store.insert, rows, token=f"{token}-{part}")
            except TraceStoreError as exc:
                self._unavailable(exc)
                if not retry:
                    raise
                # Fetch nothing meanwhile; keep polling so the group keeps us.
                consumer.pause(*self._assigned)
                await self._wait_backoff()
                if not self._pending:  # revoked while waiting: the new owner takes over
                    return
                if self._pending is not pending:
                    pending = self._pending
                    token = _token(self.topic, pending)
                continue
            break
        self._available()
        self.stats.inserted += len(pending.rows)
        self.stats.batches += 1
        offsets = {tp: last + 1 for tp, last in pending.last.items() if tp in self._assigned}
        self._pending = _Pending()
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Stored already: after a restart the store's progress skips these.
                log.warning("committing trace offsets failed (store has them): %s", exc)
        consumer.resume(*(self._assigned - self._unplaced))

    def _drop_pending(self) -> None:
        """Forget the buffered batch (uncommitted: it is read again, so its ids are no dupes)."""
        for row in self._pending.rows:
            self._recent.discard(row[0])
        self._pending = _Pending()

    async def _wait_backoff(self) -> None:
        """Sleep for the current back-off while still polling (partitions paused)."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + self._backoff
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError):
                got = await consumer.getmany(timeout_ms=200)
                for tp, records in got.items():  # a partition resumed by a rebalance
                    if records:
                        consumer.seek(tp, records[0].offset)
                        consumer.pause(tp)

    def _unavailable(self, exc: Exception) -> None:
        self.stats.store_failures += 1
        self.stats.available = False
        self._backoff = min(self.settings.sink_max_backoff_s, max(0.25, self._backoff * 2))
        log.warning(
            "trace store unavailable (%s); %d events held, retrying in %.1fs",
            exc,
            len(self._pending),
            self._backoff,
        )
        if self.store is not None and self.store.dsn.startswith("chdb://"):
            # The embedded engine is reopened rather than reused after a failure.
            self.store.close()
            self.store = None

    def _available(self) -> None:
        if not self.stats.available and self.stats.store_failures:
            log.info("trace store is back")
        self.stats.available = True
        self._backoff = 0.0

    async def _ensure_store(self) -> TraceStore:
        if self.store is None:
            try:
                self.store = await asyncio.to_thread(self._open_store)
            except TraceStoreError as exc:
                self._unavailable(exc)
                raise
            self._available()
        return self.store

    # -- where assigned partitions start ---------------------------------------------------

    async def _place(self) -> bool:
        """Seek unplaced partitions past what the store already holds; ``False``: store down."""
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(self._unplaced, key=lambda tp: tp.partition)
        try:
            store = await self._ensure_store()
            stored = await asyncio.to_thread(store.progress, [tp.partition for tp in tps])
        except TraceStoreError as exc:
            self._unavailable(exc)
            return False
        ends: dict[TopicPartition, int] = await retrying(
            lambda: consumer.end_offsets(tps), what="reading trace end offsets"
        )
        begins: dict[TopicPartition, int] = await retrying(
            lambda: consumer.beginning_offsets(tps), what="reading trace first offsets"
        )
        for tp in tps:

            async def committed_offset(tp: TopicPartition = tp) -> int | None:
                return await consumer.committed(tp)  # type: ignore[no-any-return]

            start = await retrying(committed_offset, what=f"reading the committed offset of {tp}")
            if start is None:
                start = ends[tp] if self.settings.sink_start == "latest" else begins[tp]
            held = stored.get(tp.partition)
            # Ahead of the commit and not past the end: inserted, then the commit was lost.
            # (Past the end: the topic was recreated; the store's offsets are another log's.)
            if held is not None and start < held <= ends[tp]:
                log.info("%s: store already holds offsets up to %d; skipping them", tp, held - 1)
                self.stats.skipped += held - start
                start = held
            consumer.seek(tp, start)
            self._unplaced.discard(tp)
            consumer.resume(tp)
        log.info("sink placed %d partition(s); %d assigned", len(tps), len(self._assigned))
        return True

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._pending and revoked & set(self._pending.last):
            try:
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


def _token(topic: str, pending: _Pending) -> str:
    """The same batch (same offset ranges) always gets the same deduplication token."""
    ranges = ",".join(
        f"{tp.partition}:{pending.first[tp]}-{pending.last[tp]}"
        for tp in sorted(pending.last, key=lambda tp: tp.partition)
    )
    return hashlib.sha256(f"{topic}|{ranges}".encode()).hexdigest()[:32]


def _by_day(rows: list[list[Any]]) -> list[list[list[Any]]]:
    """Split rows into runs of one day each (one table partition per insert), in order."""
    created = 9  # index of created_at in event_columns()
    runs: list[list[list[Any]]] = []
    day = None
    for row in rows:
        this = row[created].date()
        if this != day or not runs:
            runs.append([])
            day = this
        runs[-1].append(row)
    return runs
