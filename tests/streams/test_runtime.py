"""The runtime's helpers every stage shares."""

from __future__ import annotations

from weir.streams._runtime import make_record


def test_a_record_handed_over_in_process_reads_as_a_consumer_would_have_read_it() -> None:
    headers = [("h", b"1")]
    record = make_record("p.step.b", 3, 41, 1_700_000_000_000, b"r1", b"value", headers)
    assert (record.topic, record.partition, record.offset) == ("p.step.b", 3, 41)
    assert (record.timestamp, record.timestamp_type) == (1_700_000_000_000, 0)
    assert (record.key, record.value, record.headers) == (b"r1", b"value", headers)
    assert record.checksum is None
    assert (record.serialized_key_size, record.serialized_value_size) == (2, 5)
    assert make_record("t", 0, 0, 0, None, b"", []).serialized_key_size == 0
