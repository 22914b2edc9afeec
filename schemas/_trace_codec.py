"""A step's trace events as Avro bytes, written straight from an attempt's fields (hot path).

Every attempt of a step on one worker shares its pipeline, step, worker and topic, and
nearly every attempt has no model call, no error and no logged input or output: those
parts of the record (``trace_event.avsc``) are encoded once per step here, and an
attempt adds only what is its own.  The bytes are exactly what ``TraceEvent.encode``
writes (``tests/schemas/test_trace_codec.py`` checks them against it and fastavro);
an event with model calls is not written here (the caller uses ``TraceEvent``).
"""

from __future__ import annotations

import struct

__all__ = ["StepTraceCodec"]

_TWO_DOUBLES = struct.Struct("<dd")
_ONE_BYTE = [bytes([n]) for n in range(0x80)]
_NULL = b"\x00"
_NULL2 = b"\x00\x00"


def _long(n: int) -> bytes:
    """Avro ``long``: zig-zag, then a base-128 varint (unrolled for small ones and times in ms)."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if 0x800000000 <= n < 0x40000000000:  # epoch milliseconds, 1971 to 2039
        return bytes(
            (
                n & 0x7F | 0x80,
                n >> 7 & 0x7F | 0x80,
                n >> 14 & 0x7F | 0x80,
                n >> 21 & 0x7F | 0x80,
                n >> 28 & 0x7F | 0x80,
                n >> 35,
            )
        )
    if 0x40000000000 <= n < 0x2000000000000:  # and on to 10889
        return bytes(
            (
                n & 0x7F | 0x80,
                n >> 7 & 0x7F | 0x80,
                n >> 14 & 0x7F | 0x80,
                n >> 21 & 0x7F | 0x80,
                n >> 28 & 0x7F | 0x80,
                n >> 35 & 0x7F | 0x80,
                n >> 42,
            )
        )
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return _long(len(b)) + b


def _opt_string(s: str | None) -> bytes:
    return _NULL if s is None else b"\x02" + _string(s)


class StepTraceCodec:
    """Encodes the trace events of one step's attempts on one worker and input topic.

    >>> codec = StepTraceCodec(b"\\x00\\x00\\x00\\x00\\x01", "p", "s", "w", "t", "0")
    >>> codec.pipeline_id, codec.step_name, codec.worker_id, codec.topic
    ('p', 's', 'w', 't')
    """

    __slots__ = (
        "_head",
        "_middle",
        "_names",
        "_no_call",
        "_texts",
        "pipeline_id",
        "step_name",
        "topic",
        "worker_id",
    )

    def __init__(
        self,
        header: bytes,
        pipeline_id: str,
        step_name: str,
        worker_id: str,
        topic: str,
        no_cost: str,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.step_name = step_name
        self.worker_id = worker_id
        self.topic = topic
        self._head = header
        """Confluent framing; the event id, pipeline and step follow."""
        self._names = _string(pipeline_id) + _string(step_name)
        self._middle = _string(worker_id) + _string(topic)
        # endpoint, model, provider: null; no tokens; the cost of no call; usage_source,
        # routing_rule, rules_version: null; an empty calls array.
        self._no_call = _NULL * 5 + _string(no_cost) + _NULL * 4
        self._texts: dict[str, bytes] = {}
        """Encoded statuses and dispositions (a handful of constants)."""

    def encode(
        self,
        *,
        event_id: str,
        request_id: str,
        attempt: int,
        status: str,
        disposition: str,
        error_type: str | None,
        error_message: str | None,
        created_at: int,
        started_at: int,
        submitted_at: int,
        duration_ms: float,
        queue_wait_ms: float,
        partition: int,
        offset: int,
        trace_id: str | None,
        span_id: str | None,
        given: str | None,
        made: str | None,
    ) -> bytes:
        """The framed Avro bytes of an attempt made on this step (``TraceEvent``'s fields).

        The attempt has no model calls and is not a replay's (the caller checks).  Its
        fields come as typed arguments, not as an object: a compiled caller passes them
        unboxed, where reading an untyped object's is a generic lookup per field.
        """
        texts = self._texts
        status_bytes = texts.get(status)
        if status_bytes is None:
            status_bytes = texts[status] = _string(status)
        disposition_bytes = texts.get(disposition)
        if disposition_bytes is None:
            disposition_bytes = texts[disposition] = _string(disposition)
        if error_type is None and error_message is None:
            error = _NULL2
        else:
            error = _opt_string(error_type) + _opt_string(error_message)
        io = _NULL2 if given is None and made is None else _opt_string(given) + _opt_string(made)
        return b"".join(
            (
                self._head,
                _string(event_id),
                self._names,
                _string(request_id),
                _long(attempt),
                status_bytes,
                disposition_bytes,
                error,
                _long(created_at),
                _long(started_at),
                _long(submitted_at),
                _TWO_DOUBLES.pack(duration_ms, queue_wait_ms),
                self._middle,
                _long(partition),
                _long(offset),
                self._no_call,
                _NULL if trace_id is None else b"\x02" + _string(trace_id),
                _NULL if span_id is None else b"\x02" + _string(span_id),
                io,
                _NULL2,  # replay_id, variant: "" (live traffic)
            )
        )
