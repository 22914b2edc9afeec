"""Many trace events in one trace-topic record, and reading either form back.

A worker that runs a fetched batch of records writes their trace events as one
Kafka record per trace-topic partition: header ``weir.trace_batch`` (``1``, the
format's version) and a value of frames, each an unsigned LEB128 length then one
event exactly as it travels alone (Confluent-framed Avro, ``trace_event.avsc``).
Its key is the first event's request id and every event in it has a request id
that maps to the record's partition, so a reader looking for one request's events
still reads one partition.  Records without the header hold one event.

>>> one = b"\\x00abc"
>>> record = pack_trace_events([one, one])
>>> unpack_trace_events(record, [(TRACE_BATCH_HEADER, b"1")]) == [one, one]
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from weir.core.errors import UndecodableError

__all__ = [
    "TRACE_BATCH_HEADER",
    "TRACE_BATCH_VERSION",
    "is_trace_batch",
    "pack_trace_events",
    "unpack_trace_events",
]

TRACE_BATCH_HEADER = "weir.trace_batch"
TRACE_BATCH_VERSION = b"1"


def pack_trace_events(events: Iterable[bytes]) -> bytes:
    """One record's value holding ``events`` (each an encoded ``TraceEvent``)."""
    out = bytearray()
    for event in events:
        n = len(event)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += event
    return bytes(out)


def is_trace_batch(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a trace-topic record with these headers holds a batch of events."""
    return any(key == TRACE_BATCH_HEADER for key, _ in headers or ())


def unpack_trace_events(value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> list[bytes]:
    """The encoded events of a trace-topic record, in either form.

    Raises ``UndecodableError`` for a batch of another version or cut short.
    """
    version = next((v for k, v in headers or () if k == TRACE_BATCH_HEADER), None)
    if version is None:
        return [value]
    if version != TRACE_BATCH_VERSION:
        raise UndecodableError(
            f"trace batch format {version!r} is newer than this weir reads"
            f" ({TRACE_BATCH_VERSION!r}): upgrade weir"
        )
    events = []
    pos, end = 0, len(value)
    while pos < end:
        n = shift = 0
        while True:
            if pos >= end or shift > 28:
                raise UndecodableError("trace batch cut short in a frame length")
            byte = value[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        if pos + n > end:
            raise UndecodableError(f"trace batch cut short: a frame of {n} bytes at {pos}")
        events.append(value[pos : pos + n])
        pos += n
    return events
