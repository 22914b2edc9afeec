"""A sealed batch into the store: ClickHouse decodes what it can, Python reads the rest."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from weir.core.errors import TraceRowsRejectedError
from weir.traces._event_block import container
from weir.traces._event_insert import BLOCK_SCHEMA
from weir.traces._row_decoder import RowDecoder
from weir.traces._sink_batch import SinkBatch, read_row
from weir.traces.store import TraceStore

__all__ = ["Inserted", "insert_batch"]

log = logging.getLogger("weir.sink")


@dataclasses.dataclass(frozen=True)
class Inserted:
    """What an insert stored, and what it could not read."""

    events: int
    undecodable: int = 0


def insert_batch(
    store: TraceStore, batch: SinkBatch, *, token: str, decoder: RowDecoder
) -> Inserted:
    """Insert each run of ``batch`` in order as one block (token ``{token}-{n}``).

    A run of whole events goes to ClickHouse as Avro; when the store refuses a
    value in it, the run's events are read here (``decoder``) and the good ones
    inserted under the same token, the bad ones counted and named in the log.
    Raises ``TraceStoreError`` while the store is down (the caller retries it all:
    the runs already stored are dropped by their tokens).
    """
    stored = skipped = 0
    sync = os.urandom(16)
    for n, run in enumerate(batch.runs):
        part = f"{token}-{n}"
        rows = run.rows
        if run.events:
            try:
                store.insert_events(container(BLOCK_SCHEMA, sync, run.events), token=part)
            except TraceRowsRejectedError as exc:
                log.warning("%s; reading its %d events in Python", exc, len(run.events))
                rows, bad = _rows(run.events, decoder)
                skipped += bad
            else:
                stored += len(run.events)
                continue
        store.insert(rows, token=part)
        stored += len(rows)
    return Inserted(stored, skipped)


def _rows(events: list[tuple[bytes, int, int]], decoder: RowDecoder) -> tuple[list[Any], int]:
    """The rows of the events Python can read, and how many it could not."""
    rows = [read_row(raw, partition, offset, decoder) for raw, partition, offset in events]
    good = [row for row in rows if row is not None]
    return good, len(rows) - len(good)
