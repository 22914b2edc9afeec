"""Hand-written Avro codecs for envelopes and trace events without model calls (hot path).

fastavro's ``schemaless_writer``/``reader`` cost 20-35 us per envelope on this kind of
machine, mostly per-call set-up; a worker encodes and decodes several envelopes per
request.  This module writes and reads the same bytes (``schemas/envelope.avsc``, the
Confluent framing included) for envelopes whose ``calls`` array is empty, in a few
microseconds.  Anything else — model calls, or bytes this reader does not expect —
returns ``None`` and the caller uses fastavro, which also produces the error messages.
Trace events without model calls are written the same way.
``tests/schemas/test_envelope_codec.py`` checks byte-for-byte agreement with fastavro.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weir.schemas._envelope import Envelope

__all__ = [
    "ENVELOPE_FIELDS",
    "decode_fast",
    "decode_trace_fast",
    "encode_fast",
    "encode_trace_fast",
    "envelope_fields",
]

_KINDS = ("VALUE", "SKIP", "JOINED", "FAILURE")
_KIND_INDEX = {k: i for i, k in enumerate(_KINDS)}


def _long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(out: bytearray, s: str) -> None:
    b = s.encode()
    n = len(b) << 1
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    out += b


def _opt_string(out: bytearray, s: str | None) -> None:
    if s is None:
        out.append(0)
    else:
        out.append(2)
        _string(out, s)


def encode_fast(header: bytes, e: Envelope) -> bytes | None:
    """The framed Avro bytes of envelope ``e``; ``None``: let fastavro encode it."""
    if e.calls:
        return None
    try:
        return _encode(header, e)
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None  # fastavro says what does not fit the schema


def _encode(header: bytes, e: Envelope) -> bytes:
    out = bytearray(header)
    _string(out, e.request_id)
    _string(out, e.pipeline)
    _string(out, e.step)
    _string(out, e.source)
    out.append(_KIND_INDEX[e.kind] << 1)
    _long(out, e.attempt)
    _long(out, e.not_before)
    if e.first_failed_at is None:
        out.append(0)
    else:
        out.append(2)
        _long(out, e.first_failed_at)
    _long(out, e.submitted_at)
    _long(out, e.created_at)
    _opt_string(out, e.traceparent)
    _string(out, e.request)
    options = e.options
    if options:
        _long(out, len(options))
        for name, text in options.items():
            _string(out, name)
            _string(out, text)
    out.append(0)
    path = e.path
    if path:
        _long(out, len(path))
        for step in path:
            _string(out, step)
    out.append(0)
    _opt_string(out, e.payload)
    inputs = e.inputs
    if inputs:
        _long(out, len(inputs))
        for k, v in inputs.items():
            _string(out, k)
            _opt_string(out, v)
    out.append(0)
    out.append(0)  # calls: empty array
    _opt_string(out, e.error_type)
    _opt_string(out, e.error_message)
    _opt_string(out, e.failed_step)
    _opt_string(out, e.replay)
    return bytes(out)


class _Unsupported(Exception):
    pass


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def long(self) -> int:
        buf, pos = self.buf, self.pos
        b = buf[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return (b >> 1) ^ -(b & 1)
        n = b & 0x7F
        shift = 7
        while b & 0x80:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
        self.pos = pos
        return (n >> 1) ^ -(n & 1)

    def string(self) -> str:
        buf, start = self.buf, self.pos
        b = buf[start]
        if b < 0x80:
            size = (b >> 1) ^ -(b & 1)
            start += 1
        else:
            size = self.long()
            start = self.pos
        end = start + size
        if size < 0 or end > len(buf):
            raise _Unsupported
        self.pos = end
        return buf[start:end].decode()

    def opt_string(self) -> str | None:
        branch = self.long()
        if branch == 0:
            return None
        if branch != 1:
            raise _Unsupported
        return self.string()


ENVELOPE_FIELDS = (
    "request_id",
    "pipeline",
    "step",
    "source",
    "kind",
    "submitted_at",
    "created_at",
    "request",
    "payload",
    "attempt",
    "traceparent",
    "options",
    "path",
    "not_before",
    "first_failed_at",
    "inputs",
    "calls",
    "error_type",
    "error_message",
    "failed_step",
    "replay",
)
"""The order of ``envelope_fields``: ``Envelope``'s (``tests/schemas`` pin it)."""


def decode_fast(raw: bytes) -> dict[str, Any] | None:
    """The envelope's fields by name, from framed Avro bytes; ``None``: let fastavro decode it."""
    values = envelope_fields(raw)
    return None if values is None else dict(zip(ENVELOPE_FIELDS, values, strict=True))


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag long at ``pos``, of any length: ``(value, position after it)``."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _str(buf: bytes, pos: int) -> tuple[str, int]:
    """A string at ``pos``: ``(value, position after it)``."""
    b = buf[pos]
    if b < 0x80:
        if b & 1:
            raise _Unsupported
        start = pos + 1
        end = start + (b >> 1)
    else:
        size, start = _varint(buf, pos)
        if size < 0:
            raise _Unsupported
        end = start + size
    if end > len(buf):
        raise _Unsupported
    return buf[start:end].decode(), end


def _opt_str(buf: bytes, pos: int) -> tuple[str | None, int]:
    b = buf[pos]
    if b == 0:
        return None, pos + 1
    if b != 2:
        raise _Unsupported
    return _str(buf, pos + 1)


def _lng(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    return _varint(buf, pos)


def _count(buf: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count (fastavro never writes sized blocks)."""
    b = buf[pos]
    if b == 0:
        return 0, pos + 1
    count, pos = _lng(buf, pos)
    if count < 0:
        raise _Unsupported
    return count, pos


def envelope_fields(raw: bytes) -> tuple[Any, ...] | None:
    """The envelope's fields in ``Envelope``'s constructor order (``ENVELOPE_FIELDS``), from
    framed Avro bytes; ``None``: let fastavro decode it.

    Straight-line reads with the one-byte varints inline: the reader object this replaces
    cost twice as much per envelope (a method call and an attribute write per field).
    """
    buf = raw
    try:
        request_id, p = _str(buf, 5)
        pipeline, p = _str(buf, p)
        step, p = _str(buf, p)
        source, p = _str(buf, p)
        kind = buf[p]
        if kind & 1 or kind >> 1 >= len(_KINDS):
            return None
        p += 1
        attempt, p = _lng(buf, p)
        not_before, p = _lng(buf, p)
        branch = buf[p]
        p += 1
        if branch == 0:
            first_failed_at = None
        elif branch == 2:
            first_failed_at, p = _lng(buf, p)
        else:
            return None
        submitted_at, p = _lng(buf, p)
        created_at, p = _lng(buf, p)
        traceparent, p = _opt_str(buf, p)
        request, p = _str(buf, p)
        options: dict[str, str] = {}
        count, p = _count(buf, p)
        while count:
            for _ in range(count):
                key, p = _str(buf, p)
                options[key], p = _str(buf, p)
            count, p = _count(buf, p)
        path: list[str] = []
        count, p = _count(buf, p)
        while count:
            for _ in range(count):
                name, p = _str(buf, p)
                path.append(name)
            count, p = _count(buf, p)
        payload, p = _opt_str(buf, p)
        inputs: dict[str, str | None] = {}
        count, p = _count(buf, p)
        while count:
            for _ in range(count):
                key, p = _str(buf, p)
                inputs[key], p = _opt_str(buf, p)
            count, p = _count(buf, p)
        if buf[p] != 0:  # model calls: fastavro reads those
            return None
        error_type, p = _opt_str(buf, p + 1)
        error_message, p = _opt_str(buf, p)
        failed_step, p = _opt_str(buf, p)
        replay, p = _opt_str(buf, p)
    except (IndexError, UnicodeDecodeError, _Unsupported):
        return None
    return (
        request_id,
        pipeline,
        step,
        source,
        _KINDS[kind >> 1],
        submitted_at,
        created_at,
        request,
        payload,
        attempt,
        traceparent,
        options,
        path,
        not_before,
        first_failed_at,
        inputs,
        [],
        error_type,
        error_message,
        failed_step,
        replay,
    )


_DOUBLE = struct.Struct("<d")


def encode_trace_fast(header: bytes, ev: Any, no_cost: str) -> bytes | None:
    """The framed Avro bytes of trace event ``ev`` without model calls (else ``None``).

    ``no_cost`` is the ``cost_usd`` text of an attempt that made no call.
    """
    if ev.calls:
        return None
    try:
        out = bytearray(header)
        _string(out, ev.event_id)
        _string(out, ev.pipeline_id)
        _string(out, ev.step_name)
        _string(out, ev.request_id)
        _long(out, ev.attempt)
        _string(out, ev.status)
        _string(out, ev.disposition)
        _opt_string(out, ev.error_type)
        _opt_string(out, ev.error_message)
        _long(out, ev.created_at)
        _long(out, ev.started_at)
        _long(out, ev.submitted_at)
        out += _DOUBLE.pack(ev.duration_ms)
        out += _DOUBLE.pack(ev.queue_wait_ms)
        _string(out, ev.worker_id)
        _string(out, ev.topic)
        _long(out, ev.partition)
        _long(out, ev.offset)
        out += b"\x00\x00\x00\x00\x00"  # endpoint, model, provider: null; no tokens in/out
        _string(out, no_cost)
        out += b"\x00\x00\x00\x00"  # usage_source, routing_rule, rules_version: null; no calls
        _opt_string(out, ev.trace_id)
        _opt_string(out, ev.span_id)
        _opt_string(out, ev.input)
        _opt_string(out, ev.output)
        _string(out, ev.replay_id)
        _string(out, ev.variant)
        return bytes(out)
    except (TypeError, AttributeError, UnicodeEncodeError, struct.error):
        return None


def decode_trace_fast(header: bytes, raw: bytes) -> dict[str, Any] | None:
    """The Avro record of a trace event without model calls (else ``None``: use fastavro)."""
    if raw[:5] != header:
        return None
    try:
        r = _Reader(raw, 5)
        string, opt, long = r.string, r.opt_string, r.long
        record: dict[str, Any] = {
            "event_id": string(),
            "pipeline_id": string(),
            "step_name": string(),
            "request_id": string(),
            "attempt": long(),
            "status": string(),
            "disposition": string(),
            "error_type": opt(),
            "error_message": opt(),
            "created_at": long(),
            "started_at": long(),
            "submitted_at": long(),
        }
        pos = r.pos
        record["duration_ms"], record["queue_wait_ms"] = _TWO_DOUBLES.unpack_from(raw, pos)
        r.pos = pos + 16
        record["worker_id"] = string()
        record["topic"] = string()
        record["partition"] = long()
        record["offset"] = long()
        record["endpoint"] = opt()
        record["model"] = opt()
        record["provider"] = opt()
        record["input_tokens"] = long()
        record["output_tokens"] = long()
        record["cost_usd"] = string()
        record["usage_source"] = opt()
        record["routing_rule"] = opt()
        branch = long()
        if branch not in (0, 1):
            return None
        record["rules_version"] = long() if branch else None
        if long() != 0:  # model calls: fastavro reads those
            return None
        record["calls"] = []
        record["trace_id"] = opt()
        record["span_id"] = opt()
        record["input"] = opt()
        record["output"] = opt()
        record["replay_id"] = string()
        record["variant"] = string()
        if r.pos != len(raw):
            return None
        return record
    except (IndexError, UnicodeDecodeError, _Unsupported, struct.error):
        return None


_TWO_DOUBLES = struct.Struct("<dd")
