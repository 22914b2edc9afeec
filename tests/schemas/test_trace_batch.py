"""A worker's batch of trace events in one record: packed and read back exactly."""

from __future__ import annotations

import pytest

from weir.core.errors import UndecodableError
from weir.schemas.trace_batch import (
    TRACE_BATCH_HEADER,
    is_trace_batch,
    pack_trace_events,
    unpack_trace_events,
)

HEADERS = [(TRACE_BATCH_HEADER, b"1")]


def test_events_of_every_size_come_back_in_order() -> None:
    # Lengths around each varint boundary (1, 2 and 3 length bytes).
    events = [bytes([n % 251]) * n for n in (0, 1, 127, 128, 129, 16383, 16384, 70000)]
    packed = pack_trace_events(events)
    assert unpack_trace_events(packed, HEADERS) == events
    assert is_trace_batch(HEADERS)


def test_a_record_without_the_header_is_one_event() -> None:
    assert unpack_trace_events(b"\x00abc", [("other", b"x")]) == [b"\x00abc"]
    assert unpack_trace_events(b"\x00abc", None) == [b"\x00abc"]
    assert not is_trace_batch(None)


def test_a_batch_cut_short_or_of_a_newer_format_is_undecodable() -> None:
    packed = pack_trace_events([b"x" * 200, b"y" * 10])
    for cut in (1, 150, len(packed) - 1):
        with pytest.raises(UndecodableError, match="cut short"):
            unpack_trace_events(packed[:cut], HEADERS)
    with pytest.raises(UndecodableError, match="upgrade weir"):
        unpack_trace_events(packed, [(TRACE_BATCH_HEADER, b"2")])
