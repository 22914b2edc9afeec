"""The sink's fast path checks each event whole and frames it into an Avro container."""

from __future__ import annotations

import io
import os
import random
from typing import Any

import fastavro

from tests.traces.test_row_decoder import _variants
from weir.schemas.messages import TRACE_EVENT_SCHEMA, TraceEvent
from weir.traces._event_block import DAY_MS, container, scan
from weir.traces._event_insert import BLOCK_SCHEMA

HEADER = TRACE_EVENT_SCHEMA.header


def test_a_whole_event_gives_its_id_and_creation_time() -> None:
    for event in _variants(random.Random(1)):
        raw = event.encode()
        assert scan(raw, HEADER) == (event.event_id, event.created_at)


def test_bytes_that_are_not_exactly_one_event_are_left_to_the_general_reader() -> None:
    event = next(e for e in _variants(random.Random(2)) if e.calls)
    raw = event.encode()
    assert scan(b"\x00\x00\x00\x00\x63" + raw[5:], HEADER) is None  # another schema's id
    for cut in range(len(raw)):
        assert scan(raw[:cut], HEADER) is None, cut
    assert scan(raw + b"\x00", HEADER) is None
    assert scan(raw[:5] + b"\xff" * 12, HEADER) is None
    bad_id = raw[:6] + b"\xff" + raw[7:]  # the id's first byte: not UTF-8
    assert scan(bad_id, HEADER) is None


def _as_bytes(avro: Any) -> Any:
    """The schema with texts read as bytes (the same encoding, any content)."""
    if avro == "string":
        return "bytes"
    if isinstance(avro, list):
        return [_as_bytes(a) for a in avro]
    if isinstance(avro, dict):
        return {k: _as_bytes(v) if k in ("type", "items", "fields") else v for k, v in avro.items()}
    return avro


def test_corrupted_events_it_accepts_are_ones_avro_reads() -> None:
    """A flipped byte either fails the scan or still makes one whole event of the schema.

    (Texts are not checked to be UTF-8, other than the id: ClickHouse stores them as sent.)
    """
    schema = fastavro.parse_schema(_as_bytes(TRACE_EVENT_SCHEMA.definition))
    rng = random.Random(3)
    events = [e.encode() for e in _variants(rng)[:60]]
    accepted = 0
    for raw in events:
        for _ in range(40):
            flipped = bytearray(raw)
            flipped[rng.randrange(5, len(raw))] = rng.randrange(256)
            if scan(bytes(flipped), HEADER) is None:
                continue
            accepted += 1
            body = io.BytesIO(bytes(flipped[5:]))
            fastavro.schemaless_reader(body, schema)
            assert body.tell() == len(flipped) - 5
    assert accepted > 100


def test_the_container_holds_each_event_behind_its_trace_partition_and_offset() -> None:
    events = _variants(random.Random(4))
    framed = [(e.encode(), n % 3, 2**40 + n) for n, e in enumerate(events)]
    block = container(BLOCK_SCHEMA, os.urandom(16), framed)
    records = list(fastavro.reader(io.BytesIO(block)))
    assert len(records) == len(events)
    for record, (raw, partition, offset) in zip(records, framed, strict=True):
        assert record.pop("trace_partition") == partition
        assert record.pop("trace_offset") == offset
        assert record == TraceEvent.decode(raw)


def test_an_empty_container_is_valid() -> None:
    assert list(fastavro.reader(io.BytesIO(container(BLOCK_SCHEMA, b"s" * 16, [])))) == []


def test_a_day_is_a_utc_calendar_day() -> None:
    assert 1_764_633_600_000 // DAY_MS == 20424  # 2025-12-02T00:00:00Z
    assert (1_764_633_600_000 - 1) // DAY_MS == 20423
