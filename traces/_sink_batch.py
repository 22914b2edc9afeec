"""What the sink buffers: one batch of trace events with the topic offsets they came from.

A batch knows its first and last offset per partition, which gives a retried
insert the same deduplication token and tells the sink what to commit.  Events
of the current schema are kept as they arrived (ClickHouse decodes them:
``weir.traces._event_block``); others are read into rows here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition

from weir.schemas.messages import TRACE_EVENT_SCHEMA, TraceEvent
from weir.schemas.trace_batch import unpack_trace_events
from weir.streams._bounded import RecentSet
from weir.traces._event_block import DAY_MS, scan
from weir.traces._row_decoder import RowDecoder
from weir.traces.rows import epoch_ms, event_row

__all__ = ["SinkBatch", "SinkRun", "SinkStats", "batch_token", "read_row"]

log = logging.getLogger("weir.sink")

_HEADER = TRACE_EVENT_SCHEMA.header
_CREATED = 9
"""``created_at``'s place in a row (``event_columns()``)."""


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
class SinkRun:
    """Consecutive events of one UTC day, all in one form (inserted as one block)."""

    day: int
    """``created_at // DAY_MS``: the table partition of every event in the run."""
    events: list[tuple[bytes, int, int]] = dataclasses.field(default_factory=list)
    """``(event, trace partition, trace offset)``: whole events of the current schema,
    as they arrived, for ClickHouse to decode."""
    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    """Rows read here: events of another schema (an older worker's)."""


@dataclasses.dataclass
class SinkBatch:
    """Events buffered for one insert, and the offsets of the records they came from.

    The events are kept in runs, in the order they were read; a run holds one
    day's events of one form, so each insert is one table partition, and a crash
    between two inserts leaves each topic partition's stored offsets a prefix.
    """

    runs: list[SinkRun] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)
    """The event ids buffered (each also remembered in the sink's recent set)."""
    first: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    last: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    since: float = 0.0
    """``time.monotonic()`` of the first buffered record."""

    def __len__(self) -> int:
        return len(self.ids)

    def take(
        self,
        tp: TopicPartition,
        offset: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        *,
        stats: SinkStats,
        recent: RecentSet[str],
    ) -> int:
        """Buffer the events of one record (one event, or a worker's batch of them).

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
        partition = tp.partition
        for raw in events:
            scanned = scan(raw, _HEADER)
            if scanned is not None:
                event_id, created_at = scanned
                if not recent.add(event_id):
                    stats.duplicates += 1
                    continue
                self._run(created_at // DAY_MS, rows=False).events.append((raw, partition, offset))
                self.ids.append(event_id)
                continue
            # Another schema's framing, or bytes the scan refused: the general reader.
            row = read_row(raw, partition, offset)
            if row is None:
                stats.undecodable += 1
                continue
            if not recent.add(row[0]):
                stats.duplicates += 1
                continue
            self._run(epoch_ms(row[_CREATED]) // DAY_MS, rows=True).rows.append(row)
            self.ids.append(row[0])
        stats.ids_forgotten = recent.evicted
        return len(events)

    def _run(self, day: int, *, rows: bool) -> SinkRun:
        """The last run if it holds ``day``'s events of this form, else a new one."""
        if self.runs:
            run = self.runs[-1]
            if run.day == day and bool(run.rows) == rows:  # a run is never empty
                return run
        run = SinkRun(day)
        self.runs.append(run)
        return run


def read_row(
    raw: bytes, partition: int, offset: int, decoder: RowDecoder | None = None
) -> list[Any] | None:
    """The event's row read in Python (``decoder`` first, when given), or ``None``.

    An event that does not decode is logged by its trace partition and offset; the
    caller counts it and goes on (one bad event never stops the sink).
    """
    try:
        row = decoder.row(raw, partition, offset) if decoder is not None else None
        return row if row is not None else event_row(TraceEvent.decode(raw), partition, offset)
    except Exception as exc:  # any malformed event
        log.warning("skipping undecodable trace event %d@%d: %s", partition, offset, exc)
        return None


def batch_token(topic: str, batch: SinkBatch) -> str:
    """The same batch (same offset ranges) always gets the same deduplication token."""
    ranges = ",".join(
        f"{tp.partition}:{batch.first[tp]}-{batch.last[tp]}"
        for tp in sorted(batch.last, key=lambda tp: tp.partition)
    )
    return hashlib.sha256(f"{topic}|{ranges}".encode()).hexdigest()[:32]
