"""What the sink buffers: one batch of trace rows with the topic offsets they came from.

A batch knows its first and last offset per partition, which gives a retried
insert the same deduplication token and tells the sink what to commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition

from weir.schemas.messages import TraceEvent
from weir.schemas.trace_batch import unpack_trace_events
from weir.streams._bounded import RecentSet
from weir.traces._row_decoder import RowDecoder
from weir.traces.rows import event_row

__all__ = ["SinkBatch", "SinkStats", "batch_token", "rows_by_day"]

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
class SinkBatch:
    """Rows buffered for one insert, and the offsets of the records they came from."""

    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    first: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    last: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    since: float = 0.0
    """``time.monotonic()`` of the first buffered record."""

    def __len__(self) -> int:
        return len(self.rows)

    def take(
        self,
        tp: TopicPartition,
        offset: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        *,
        stats: SinkStats,
        recent: RecentSet[str],
        decoder: RowDecoder,
    ) -> int:
        """Buffer the rows of one record (one event, or a worker's batch of them).

        Returns how many events the record held.  Undecodable records and events
        are counted and skipped, events whose id is in ``recent`` dropped as resends.
        """
        if not self:
            self.since = time.monotonic()
        self.first.setdefault(tp, offset)
        self.last[tp] = offset
        try:
            if not value:
                raise ValueError("empty message")
            events = unpack_trace_events(value, headers)
        except Exception as exc:  # any malformed record: count it, never stop the sink
            stats.consumed += 1
            stats.undecodable += 1
            log.warning("skipping undecodable trace record %s@%d: %s", tp, offset, exc)
            return 1
        stats.consumed += len(events)
        for raw in events:
            try:
                row = decoder.row(raw, tp.partition, offset)
                if row is None:  # model calls, or an older schema: the general reader
                    row = event_row(TraceEvent.decode(raw), tp.partition, offset)
            except Exception as exc:  # any malformed event: count it, never stop the sink
                stats.undecodable += 1
                log.warning("skipping undecodable trace event %s@%d: %s", tp, offset, exc)
                continue
            if not recent.add(row[0]):
                stats.duplicates += 1
                continue
            self.rows.append(row)
        stats.ids_forgotten = recent.evicted
        return len(events)


def batch_token(topic: str, batch: SinkBatch) -> str:
    """The same batch (same offset ranges) always gets the same deduplication token."""
    ranges = ",".join(
        f"{tp.partition}:{batch.first[tp]}-{batch.last[tp]}"
        for tp in sorted(batch.last, key=lambda tp: tp.partition)
    )
    return hashlib.sha256(f"{topic}|{ranges}".encode()).hexdigest()[:32]


def rows_by_day(rows: list[list[Any]]) -> list[list[list[Any]]]:
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
