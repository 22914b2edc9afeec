"""Encoded trace events as one Avro container block, for ClickHouse to decode.

The sink's fast path: an event of the current trace-event schema is checked to be
whole (``scan``: every field of ``trace_event.avsc`` read, nothing left over) and
kept as it arrived; at insert, its Avro body (the 5-byte Confluent framing
dropped) goes into one object container block behind the record's trace-topic
partition and offset (``container``), which the store inserts with
``INSERT ... SELECT ... FORMAT Avro`` (``weir.traces.store``).  Python does not
build the row, so an event costs the sink a scan and a copy.  Compiled with mypyc
(``tests/traces/test_event_block.py`` reads the blocks back with fastavro).
"""

from __future__ import annotations

from collections.abc import Sequence

from weir.traces._row_decoder import _long, _Unexpected

__all__ = ["DAY_MS", "container", "scan"]

DAY_MS = 86_400_000
"""Milliseconds in a UTC day: ``created_at // DAY_MS`` is an event's table partition."""


def _past_long(raw: bytes, pos: int, end: int) -> int:
    """The position after a varint at ``pos`` (at most 10 bytes)."""
    stop = pos + 10
    while pos < end and pos < stop:
        b = raw[pos]
        pos += 1
        if b < 0x80:
            return pos
    raise _Unexpected


def _past_str(raw: bytes, pos: int, end: int) -> int:
    """The position after a string (or bytes) at ``pos``."""
    b = raw[pos] if pos < end else 0x80
    if b < 0x80:  # the usual short string: its length in one byte
        if b & 1:
            raise _Unexpected
        pos += 1 + (b >> 1)
    else:
        n, pos = _long(raw, pos)
        if n < 0:
            raise _Unexpected
        pos += n
    if pos > end:
        raise _Unexpected
    return pos


def _branch(raw: bytes, pos: int, end: int) -> bool:
    """Whether the union with null first at ``pos`` holds a value (branch 1), not null."""
    if pos >= end:
        raise _Unexpected
    b = raw[pos]
    if b == 0:
        return False
    if b != 2:
        raise _Unexpected
    return True


def _past_opt_str(raw: bytes, pos: int, end: int) -> int:
    return _past_str(raw, pos + 1, end) if _branch(raw, pos, end) else pos + 1


def _past_opt_long(raw: bytes, pos: int, end: int) -> int:
    return _past_long(raw, pos + 1, end) if _branch(raw, pos, end) else pos + 1


def _past_call(raw: bytes, pos: int, end: int) -> int:
    """The position after one ``ModelCall``."""
    pos = _past_str(raw, pos, end)  # step
    pos = _past_long(raw, pos, end)  # attempt
    for _ in range(5):  # endpoint, provider, model, operation, status
        pos = _past_str(raw, pos, end)
    pos = _past_opt_str(raw, pos, end)  # error_type
    pos = _past_long(raw, pos, end)  # input_tokens
    pos = _past_long(raw, pos, end)  # output_tokens
    pos = _past_str(raw, pos, end)  # usage_source
    pos = _past_str(raw, pos, end)  # cost_usd
    pos = _past_long(raw, pos, end)  # started_at
    pos += 8  # duration_ms
    pos = pos + 9 if _branch(raw, pos, end) else pos + 1  # ttft_ms
    if pos >= end or raw[pos] > 1:  # streamed
        raise _Unexpected
    pos = _past_opt_str(raw, pos + 1, end)  # rule
    pos = _past_opt_long(raw, pos, end)  # rules_version
    return _past_opt_str(raw, pos, end)  # fallback_from


def _past_calls(raw: bytes, pos: int, end: int) -> int:
    """The position after the array of model calls."""
    count, pos = _long(raw, pos)
    while count:
        if count < 0:  # a block that also gives its size in bytes
            count = -count
            pos = _past_long(raw, pos, end)
        for _ in range(count):
            pos = _past_call(raw, pos, end)
        count, pos = _long(raw, pos)
    return pos


def scan(raw: bytes, header: bytes) -> tuple[str, int] | None:
    """The event id and ``created_at`` of a whole event framed with ``header``, else ``None``.

    ``None`` for another schema's framing and for bytes that are not exactly one
    event of ``trace_event.avsc`` (cut short, a union or boolean out of range,
    bytes left over, an id that is not UTF-8): the caller reads those the general
    way, which says what is wrong.  Only the id's text is decoded here;
    ClickHouse stores the other texts as they are.
    """
    end = len(raw)
    if end < 5 or raw[:5] != header:
        return None
    try:
        n, pos = _long(raw, 5)
        if n < 0 or pos + n > end:
            return None
        event_id = raw[pos : pos + n].decode()
        pos += n
        for _ in range(3):  # pipeline_id, step_name, request_id
            pos = _past_str(raw, pos, end)
        pos = _past_long(raw, pos, end)  # attempt
        pos = _past_str(raw, pos, end)  # status
        pos = _past_str(raw, pos, end)  # disposition
        pos = _past_opt_str(raw, pos, end)  # error_type
        pos = _past_opt_str(raw, pos, end)  # error_message
        created_at, pos = _long(raw, pos)
        pos = _past_long(raw, pos, end)  # started_at
        pos = _past_long(raw, pos, end)  # submitted_at
        pos += 16  # duration_ms, queue_wait_ms
        pos = _past_str(raw, pos, end)  # worker_id
        pos = _past_str(raw, pos, end)  # topic
        pos = _past_long(raw, pos, end)  # partition
        pos = _past_long(raw, pos, end)  # offset
        for _ in range(3):  # endpoint, model, provider
            pos = _past_opt_str(raw, pos, end)
        pos = _past_long(raw, pos, end)  # input_tokens
        pos = _past_long(raw, pos, end)  # output_tokens
        pos = _past_str(raw, pos, end)  # cost_usd
        pos = _past_opt_str(raw, pos, end)  # usage_source
        pos = _past_opt_str(raw, pos, end)  # routing_rule
        pos = _past_opt_long(raw, pos, end)  # rules_version
        pos = _past_calls(raw, pos, end)
        for _ in range(4):  # trace_id, span_id, input, output
            pos = _past_opt_str(raw, pos, end)
        pos = _past_str(raw, pos, end)  # replay_id
        pos = _past_str(raw, pos, end)  # variant
    except (_Unexpected, IndexError, UnicodeDecodeError):  # IndexError: a varint cut short
        return None
    return (event_id, created_at) if pos == end else None


def _varint(out: bytearray, value: int) -> None:
    """Append ``value`` zigzag-encoded (Avro's ``int`` and ``long``)."""
    n = (value << 1) ^ (value >> 63)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(out: bytearray, value: bytes) -> None:
    _varint(out, len(value))
    out += value


def container(schema: bytes, sync: bytes, events: Sequence[tuple[bytes, int, int]]) -> bytes:
    """An Avro object container of one block: each ``(event, trace partition, trace offset)``.

    ``schema`` (JSON) is the trace-event record with ``trace_partition`` (int) and
    ``trace_offset`` (long) first; each datum is those two, then the event's Avro
    body (its bytes after the 5-byte framing).  ``sync`` is the 16-byte marker.
    """
    out = bytearray(b"Obj\x01")
    _varint(out, 2)  # the metadata map: one block of two entries
    _string(out, b"avro.schema")
    _string(out, schema)
    _string(out, b"avro.codec")
    _string(out, b"null")
    _varint(out, 0)
    out += sync
    if not events:
        return bytes(out)
    data = bytearray()
    for raw, partition, offset in events:
        _varint(data, partition)
        _varint(data, offset)
        data += memoryview(raw)[5:]
    _varint(out, len(events))
    _varint(out, len(data))
    out += data
    out += sync
    return bytes(out)
